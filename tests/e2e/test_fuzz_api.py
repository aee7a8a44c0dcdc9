"""Property-based fuzzing of the whole REST and scoring API from its own OpenAPI document (Schemathesis),
against a real `forgeflow serve` on loopback with a real deployment of the tiny model.

For every operation: no 5xx, no response that breaks its own schema, and the same request without a credential
is refused (401, or 429 once the failed-credential limit is reached) unless the route is public. Bounded: a fixed
number of examples per operation, no deadline per example.
"""

from __future__ import annotations

import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_server import LiveServer
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.integration

# Routes anyone may call: liveness, the API's own description, the sign-in page and the session exchange.
PUBLIC = {("GET", "/api/health"), ("POST", "/api/session"), ("DELETE", "/api/session"), ("GET", "/signin")}
EXAMPLES = int(os.environ.get("FORGEFLOW_FUZZ_EXAMPLES", "15"))


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory, tiny_model_dir):
    server = LiveServer.on_loopback(tmp_path_factory.mktemp("fuzz-home"))
    server.start()
    try:
        admin = {"Authorization": f"Bearer {server.cli('token', 'show').stdout.strip().splitlines()[-1]}"}
        server.cli("online-endpoint", "create", "--name", "fuzz-ep")
        server.cli("online-deployment", "create", "--name", "blue", "--endpoint-name", "fuzz-ep",
                   "--model", str(tiny_model_dir), "--all-traffic")
        key = httpx.get(f"{server.url}/api/endpoints/fuzz-ep/credentials", headers=admin).json()["primary_key"]
        yield {"url": server.url, "admin": admin, "key": key}
    finally:
        server.stop()


def _credential(case, target) -> dict:
    return {"Authorization": f"Bearer {target['key']}"} if case.path.startswith("/endpoints/") else target["admin"]


def test_no_5xx_no_broken_schema_no_route_without_auth(fuzz_target):
    base = fuzz_target["url"]
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40, "the OpenAPI document lost its operations"

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(base_url=base, headers=_credential(case, fuzz_target), timeout=60)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            if (case.method.upper(), case.path) in PUBLIC:
                return
            anonymous = case.call(base_url=base, headers={"Authorization": ""}, timeout=60)
            assert anonymous.status_code in (401, 429), (
                f"answered {anonymous.status_code} without a credential")

        try:
            fuzz()
        except Exception as exc:  # noqa: BLE001 - every operation is fuzzed; all failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
