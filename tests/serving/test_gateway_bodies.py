"""What the gateway refuses before it routes: bodies JSON cannot carry, and keys for endpoints that do not exist."""

from __future__ import annotations

import httpx
from gateway_harness import post


def test_nan_infinity_and_overflowing_numbers_are_400_at_the_gateway(gateway):
    """issue 10, finding 5: NaN, Infinity and 1e999 are refused by the one JSON reader every hop uses (a flow
    deployment, which takes no chat body, is covered in tests/e2e/test_flow_deployment.py)."""
    key = gateway.endpoint("finite-ep")
    gateway.deploy("finite-ep", "blue")
    gateway.svc.update_endpoint("finite-ep", traffic={"blue": 100})
    assert post(gateway, "finite-ep", key).status_code == 200
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = ('{"input_data": {"input_string": [{"role": "user", "content": "hi"}], '
               '"parameters": {"temperature": %s}}}' % number)
        r = httpx.post(f"{gateway.url}/endpoints/finite-ep/score", content=raw, timeout=30,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status_code == 400, (number, r.text)
        assert r.json()["error"] == "InvalidInput" and number.lstrip("-") in r.json()["message"]


def test_an_unknown_endpoint_answers_like_a_wrong_key(gateway):
    """A key sent to a name that is no endpoint gets the same 401 as a wrong key to a real one, so endpoint names
    cannot be probed apart from keys (the 404 was also never counted as a failed credential)."""
    key = gateway.endpoint("real-ep")
    for path in ("score", "v1/chat/completions"):
        wrong = post(gateway, "real-ep", "not-the-key", path=path)
        missing = post(gateway, "no-such-ep", key, path=path)
        assert wrong.status_code == missing.status_code == 401
    r = httpx.get(f"{gateway.url}/endpoints/no-such-ep/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401
