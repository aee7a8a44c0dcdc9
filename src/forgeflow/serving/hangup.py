"""The gateway's watch on a client that hangs up while its request waits for a non-streamed answer."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

WATCH_AFTER_S = 0.05  # how long a request waits for its answer before the gateway watches for its client leaving


class HangUpWatch:
    """Cancels the task forwarding a request once its client hangs up (a streamed answer's relay listens on its
    own), so the instance's connection closes and a non-streamed answer no one waits for is not decoded to its
    end. It starts watching only for a request still unanswered after WATCH_AFTER_S: a quick answer costs a timer,
    not a task. `left()` in the task's `except CancelledError`: whether the hang-up cancelled it (then
    uncancelled)."""

    def __init__(self, request: Request) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._hung_up = False
        self._watching: asyncio.Future | None = None
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start, request)

    def _start(self, request: Request) -> None:
        self._watching = asyncio.ensure_future(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self._hung_up = True  # not after stop(): this task is cancelled at its await then
        self._task.cancel()

    def left(self) -> bool:
        return self._hung_up and self._task.uncancel() == 0

    def stop(self) -> None:
        """Called in the task's `finally`: no cancel reaches it after this."""
        self._timer.cancel()
        if self._watching is not None:
            self._watching.cancel()
