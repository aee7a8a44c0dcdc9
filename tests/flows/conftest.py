"""The flow tests' fixtures live in tests/flow_fixtures.py, shared with the CLI tests."""

from flow_fixtures import fresh_shim, llm_server, make_flow, scoring_server  # noqa: F401 - fixtures
