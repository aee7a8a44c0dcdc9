"""Fixtures for the gateway tests (the harness lives in gateway_harness.py)."""

from gateway_harness import follower_gateway, gateway  # noqa: F401
