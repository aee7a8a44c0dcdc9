"""A limit on failed credentials per client address: after `limit` failures within `window_s` seconds, further
failures are answered 429 with Retry-After until the oldest of them leaves the window (a sliding window).

Only failures are counted: a caller with a good credential is never slowed, even from an address that is being
refused (on a laptop every client is 127.0.0.1, and one script with a stale key must not lock out the Studio).
Memory stays bounded: at most `limit` times per address, and at most `max_clients` addresses.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

FAILURES_PER_WINDOW = 10
WINDOW_S = 60.0
MAX_CLIENTS = 10_000


class FailureLimiter:
    def __init__(self, limit: int = FAILURES_PER_WINDOW, window_s: float = WINDOW_S, *,
                 max_clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def failed(self, client: str) -> int | None:
        """Count one failed credential from `client`. None: answer 401 as usual; else the whole seconds to put in
        Retry-After of a 429 (a refused attempt is not counted again, so the wait never grows past the window)."""
        with self._lock:
            at = self.clock()
            times = self._failures.pop(client, None) or deque()
            while times and times[0] <= at - self.window_s:
                times.popleft()
            self._failures[client] = times  # re-inserted: the dict's order is least recently failed first
            if len(times) >= self.limit:
                return max(1, math.ceil(times[0] + self.window_s - at))
            times.append(at)
            if len(self._failures) > self.max_clients:
                self._forget(at)
            return None

    def _forget(self, at: float) -> None:
        """Drop addresses whose failures have all left the window, then the least recent ones if still too many."""
        for client in [c for c, t in self._failures.items() if not t or t[-1] <= at - self.window_s]:
            del self._failures[client]
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]
