"""Real server processes on loopback, each with its own workspace home."""

from __future__ import annotations

import pytest
from live_server import LiveServer


@pytest.fixture
def live_server(forgeflow_home):
    server = LiveServer.on_loopback(forgeflow_home)
    server.start()
    yield server
    server.stop()
