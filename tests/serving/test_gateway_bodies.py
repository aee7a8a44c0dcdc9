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


def test_a_path_no_route_pattern_matches_is_a_404_in_the_dialect_of_the_path(gateway):
    """A newline in a model id matches no route pattern (not even the gateway's catch-all), so Starlette refuses
    it; under /endpoints/NAME/v1 the 404 must still be OpenAI's shape, found by the API fuzz test."""
    key = gateway.endpoint("ctl-ep")
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.get(f"{gateway.url}/endpoints/ctl-ep/v1/models/a%0Ab", headers=headers, timeout=30)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] and r.json()["error"]["message"], r.text
    r = httpx.get(f"{gateway.url}/endpoints/ctl-ep/score%0Ax", headers=headers, timeout=30)
    assert r.status_code == 404 and r.json()["error"] == "NotFound", r.text  # /score's shape is the tree's


def test_unpaired_surrogates_are_400_in_each_routes_shape(gateway):
    """A lone UTF-16 surrogate written with JSON's escapes, as a key (quoted by the refusal), the model name or a
    message, is a 400 saying to send valid Unicode on every route, not a 500 when the answer cannot be encoded."""
    key = gateway.endpoint("utf-ep")
    gateway.deploy("utf-ep", "blue")
    gateway.svc.update_endpoint("utf-ep", traffic={"blue": 100})
    message = '{"role": "user", "content": "hi"}'
    chat = ['{"messages": [%s], "\\ud800": 1}' % message, '{"messages": [%s], "model": "\\ud800"}' % message,
            '{"messages": [{"role": "user", "content": "\\udfff"}], "stream": true}']
    routes = {"v1/chat/completions": chat, "chat/completions": chat,
              "v1/completions": ['{"prompt": "x", "model": "\\udbff"}'],
              "score": ['{"input_data": {"input_string": [{"role": "user", "content": "\\ud800"}]}}']}
    for path, raws in routes.items():
        for raw in raws:
            r = httpx.post(f"{gateway.url}/endpoints/utf-ep/{path}", content=raw.encode(), timeout=30,
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            assert r.status_code == 400, (path, raw, r.text)
            error = r.json()["error"]
            message_text = error["message"] if isinstance(error, dict) else r.json()["message"]
            assert "send valid Unicode" in message_text, (path, r.text)


def test_a_model_name_is_capped_as_it_is_echoed_in_every_chunk(gateway):
    """`model` comes back in every chunk of a stream: a long one is a 400 naming it, not a huge answer."""
    key = gateway.endpoint("long-ep")
    gateway.deploy("long-ep", "blue")
    gateway.svc.update_endpoint("long-ep", traffic={"blue": 100})
    body = {"messages": [{"role": "user", "content": "hi"}], "model": "m" * 100_000, "n": 4, "stream": True}
    r = post(gateway, "long-ep", key, body, path="v1/chat/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text[:300]
    assert post(gateway, "long-ep", key, {**body, "model": "m" * 256}, path="v1/chat/completions").status_code == 200


def test_hostile_bodies_the_depth_guard_cannot_see_are_400(gateway):
    """Nesting hidden where the guard does not count it: inside a tool call's `arguments` string (the parser of
    that string hit its recursion limit: a 500 naming the server's log file), or in a body in UTF-16, whose bytes
    the guard reads as UTF-8 (the parser read it all the same and the 900 levels went on to the instance)."""
    key = gateway.endpoint("deep-ep")
    gateway.deploy("deep-ep", "blue")
    gateway.svc.update_endpoint("deep-ep", traffic={"blue": 100})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[" * 100_000}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"}]
    for path in ("v1/chat/completions", "chat/completions"):
        r = httpx.post(f"{gateway.url}/endpoints/deep-ep/{path}", json={"messages": messages}, headers=headers,
                       timeout=30)
        assert r.status_code == 400 and "arguments" in r.text, (path, r.text)
    # in UTF-16 the escape's backslash escapes the 0 byte after it, not the quote: the guard's string state flips
    deep = '{"messages": [{"role": "user", "content": "a \\" in it"}], "x": ' + "[" * 900 + "]" * 900 + "}"
    for encoding in ("utf-8", "utf-16", "utf-32"):
        r = httpx.post(f"{gateway.url}/endpoints/deep-ep/v1/chat/completions", content=deep.encode(encoding),
                       headers=headers, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], (encoding, r.text)
        assert ("deeper" in r.text) if encoding == "utf-8" else ("not UTF-8" in r.text), (encoding, r.text)


def test_an_endpoint_path_without_its_route_is_a_404_never_a_redirect(gateway):
    """/endpoints/NAME with no route after it: Starlette would redirect to the path with a slash, to the client's
    own Host, before any key is checked."""
    gateway.endpoint("bare-ep")
    for method in ("GET", "POST"):
        r = httpx.request(method, f"{gateway.url}/endpoints/bare-ep", headers={"Host": "evil.example",
                          "Authorization": "Bearer junk"}, timeout=30)
        assert r.status_code == 404 and "location" not in r.headers, (method, r.status_code, r.headers)
