"""Fixtures for the gateway tests (the harness lives in gateway_harness.py)."""

from gateway_harness import gateway  # noqa: F401
