"""Endpoints at Azure-style URLs: a host name per endpoint (routed by the Host header) and a port per endpoint
(a listener in the server's own event loop), both served through the same guard and gateway as
/endpoints/NAME/..., against fake model servers."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from endpoint_ports import free_endpoint_port, free_endpoint_ports
from gateway_harness import FAST_LIVENESS, FAST_PROBES, SCORE, FakePlacement

from forgeflow.api import endpoint_addresses
from forgeflow.api.app import create_app
from forgeflow.errors import Conflict, InvalidInput
from forgeflow.serving.endpoint_hosts import check_domain, check_port, check_port_range, host_label, scoring_urls
from forgeflow.store.workspace import Workspace

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_a_host_header_names_an_endpoint_only_under_the_domain():
    assert host_label("blue-ep.localhost:8765", "localhost") == "blue-ep"
    assert host_label("Blue-Ep.LOCALHOST.", "localhost") == "blue-ep"  # host names ignore case; an FQDN's dot
    assert host_label("blue-ep.ml.example.com", "ml.example.com") == "blue-ep"
    for host in ("localhost:8765", "127.0.0.1:8765", "a.b-ep.localhost", "blue-ep.localhost.evil", "ab.localhost",
                 "blue-ep.localhost:x", "[::1]:80", "x/y-ep.localhost", "9ep.localhost", "", None):
        assert host_label(host, "localhost") is None, host
    assert host_label("blue-ep.localhost", "") is None  # host names turned off


def test_domain_and_port_are_checked_naming_the_field(monkeypatch):
    assert check_domain("ML.Example.com.") == "ml.example.com"
    assert check_domain("") == ""
    monkeypatch.setenv("FORGEFLOW_ENDPOINT_DOMAIN", "ep.internal")
    assert check_domain(None) == "ep.internal"
    with pytest.raises(InvalidInput) as err:
        check_domain("bad domain")
    assert err.value.field == "endpoint_domain"
    ports = range(9000, 10000)
    assert check_port(None, ports) is None and check_port(9001, ports) == 9001 and check_port(9001.0, ports) == 9001
    for bad in (0, 65536, -1, True, "9001", 1.5):
        with pytest.raises(InvalidInput) as err:
            check_port(bad, ports)
        assert err.value.field == "port"


def test_a_port_outside_the_servers_range_is_refused_saying_the_range_and_how_to_change_it(monkeypatch):
    for outside in (22, 5432, 8265, 40000, 8999, 10000):
        with pytest.raises(InvalidInput) as err:
            check_port(outside, range(9000, 10000))
        assert err.value.field == "port"
        assert "9000-9999" in err.value.message and "--endpoint-ports" in err.value.message, err.value.message
    assert check_port(443, check_port_range("443")) == 443  # a range the operator chose is theirs


def test_the_port_range_is_checked_and_comes_from_the_option_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("FORGEFLOW_ENDPOINT_PORTS", raising=False)
    default = check_port_range(None)
    assert default == range(9000, 10000)
    assert default.start >= 1024 and not set(default) & set(range(32768, 61000))  # not Linux's ephemeral ports
    assert check_port_range(" 9100-9199 ") == range(9100, 9200) and check_port_range("9100") == range(9100, 9101)
    monkeypatch.setenv("FORGEFLOW_ENDPOINT_PORTS", "20000-20099")
    assert check_port_range(None) == range(20000, 20100)
    for bad in ("", "0-10", "9100-9000", "abc", "9000-70000", "9000-", "-9000", "1-2-3"):
        with pytest.raises(InvalidInput) as err:
            check_port_range(bad)
        assert err.value.field == "endpoint_ports" and "--endpoint-ports" in err.value.message, bad


def test_show_gives_the_azure_style_urls():
    urls = scoring_urls("http://127.0.0.1:8765", "localhost", "My-Ep", 9001, ["My-Ep", "other-ep"])
    assert urls == {"port": 9001, "host_scoring_uri": "http://my-ep.localhost:8765/score",
                    "host_scoring_uri_note": None, "port_scoring_uri": "http://127.0.0.1:9001/score"}
    off = scoring_urls("http://[::1]:8765", "", "my-ep", None, ["my-ep"])
    assert off["host_scoring_uri"] is None and off["port_scoring_uri"] is None
    assert "--endpoint-domain" in off["host_scoring_uri_note"]
    assert scoring_urls("http://[::1]:8765", "x.io", "my-ep", 81, ["my-ep"])["port_scoring_uri"] == "http://[::1]:81/score"


def test_of_names_equal_but_for_case_one_has_the_host_name_and_show_says_so_for_the_other():
    names = ["EP-One", "Ep-One", "other-ep"]
    assert scoring_urls("http://127.0.0.1:8765", "localhost", "EP-One", None, names)["host_scoring_uri"] == \
        "http://ep-one.localhost:8765/score"
    shadowed = scoring_urls("http://127.0.0.1:8765", "localhost", "Ep-One", None, names)
    assert shadowed["host_scoring_uri"] is None
    assert "'EP-One'" in shadowed["host_scoring_uri_note"] and "case" in shadowed["host_scoring_uri_note"]
    with_lower = ["EP-One", "ep-one"]  # the lowercase name, when there is one, keeps the host name
    assert scoring_urls("http://h:1", "localhost", "ep-one", None, with_lower)["host_scoring_uri"] is not None
    assert scoring_urls("http://h:1", "localhost", "EP-One", None, with_lower)["host_scoring_uri"] is None


async def test_shadowed_endpoints_are_shown_without_a_host_name_and_the_host_routes_to_the_one_shown():
    ws = Workspace.open()
    app = create_app(ws, background=False)
    async with app.router.lifespan_context(app):
        svc = app.state.ff.endpoints
        svc.create_endpoint("EP-One")
        svc.create_endpoint("Ep-One")
        shown = {ep["name"]: ep for ep in svc.list_endpoints()}
        assert shown["EP-One"]["host_scoring_uri"] == "http://ep-one.localhost:8765/score"
        assert shown["Ep-One"]["host_scoring_uri"] is None and "EP-One" in shown["Ep-One"]["host_scoring_uri_note"]
        assert svc.show_endpoint("Ep-One") == shown["Ep-One"]
        keys = {name: svc.credentials(name)["primary_key"] for name in shown}
        async with _client(app, "ep-one.localhost") as c:
            r = await c.post("/score", json=SCORE, headers={"Authorization": f"Bearer {keys['EP-One']}"})
            assert r.status_code == 404 and "no deployment with traffic" in r.text, r.text  # EP-One's: reached
            r = await c.post("/score", json=SCORE, headers={"Authorization": f"Bearer {keys['Ep-One']}"})
            assert r.status_code == 401  # Ep-One's key is no credential of EP-One's


async def test_the_servers_own_host_name_is_never_taken_for_an_endpoints():
    """A server at forge-srv.example.com with --endpoint-domain example.com: its own host falls under the domain,
    so requests to it keep reaching the server; an endpoint named like it has no host name, and show says why."""
    ws = Workspace.open()
    app = create_app(ws, base_url="http://forge-srv.example.com:8765", background=False, endpoint_domain="example.com")
    admin = {"Authorization": f"Bearer {ws.admin_token()}"}
    async with app.router.lifespan_context(app):
        svc = app.state.ff.endpoints
        svc.create_endpoint("forge-srv")
        svc.create_endpoint("other-ep")
        key = svc.credentials("other-ep")["primary_key"]
        for host in ("forge-srv.example.com:8765", "FORGE-SRV.example.com."):
            async with _client(app, host) as c:
                r = await c.get("/api/endpoints", headers=admin)
                assert r.status_code == 200 and {e["name"] for e in r.json()} == {"forge-srv", "other-ep"}, r.text
                assert (await c.get("/api/health")).json()["status"] == "ok"
        async with _client(app, "other-ep.example.com:8765") as c:  # the other endpoints' host names still route
            r = await c.post("/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 404 and "no deployment with traffic" in r.text, r.text
        shown = svc.show_endpoint("forge-srv")
        assert shown["host_scoring_uri"] is None and "server's own" in shown["host_scoring_uri_note"]
        assert svc.show_endpoint("other-ep")["host_scoring_uri"] == "http://other-ep.example.com:8765/score"


async def test_a_request_with_two_host_headers_is_refused_before_it_is_routed(served):
    """RFC 9112 3.2: more than one Host is a 400, whichever comes first; never the control plane for one of them,
    an endpoint for the other. On the server's port and on an endpoint's own, through the real HTTP server too."""
    app, key, ws = served
    admin = {"Authorization": f"Bearer {ws.admin_token()}"}
    async with _client(app, "127.0.0.1") as c:
        for hosts in (("127.0.0.1:8765", "host-ep.localhost"), ("host-ep.localhost", "127.0.0.1:8765")):
            for method, path, headers in (("GET", "/api/endpoints", admin),
                                          ("POST", "/score", {"Authorization": f"Bearer {key}"})):
                raw = [("Host", h) for h in hosts] + list(headers.items())
                r = await c.request(method, path, headers=raw, json=SCORE if method == "POST" else None)
                assert r.status_code == 400, (hosts, path, r.text)
                assert r.json()["field"] == "host" and "Host" in r.json()["message"]
    ff = app.state.ff
    port = free_endpoint_port()
    ff.endpoints.update_endpoint("host-ep", port=port)
    await ff.ports.sync()
    request = (f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: other.localhost\r\n"
               f"Authorization: Bearer {key}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"field":"host"' in answer.replace(b" ", b"")


@pytest.fixture
async def served(monkeypatch):
    """An app (no leadership threads) in this test's event loop whose deployments run the fake model server, with
    endpoint `host-ep` (body cap 4096) answering "H" through deployment blue, and the ports listeners on."""
    monkeypatch.setattr("forgeflow.api.app.LocalPlacement", FakePlacement)
    monkeypatch.setattr(endpoint_addresses, "RETRY_S", 0.0)
    ws = Workspace.open()
    app = create_app(ws, background=False, endpoint_ports=True)
    async with app.router.lifespan_context(app):
        svc = app.state.ff.endpoints
        svc.create_endpoint("host-ep", max_body_bytes=4096)
        svc.create_deployment("host-ep", "blue", "fake:1", '{"output": "H"}', liveness_probe=FAST_LIVENESS,
                              readiness_probe=FAST_PROBES)
        deadline = time.monotonic() + 30
        while svc.show_deployment("host-ep", "blue")["provisioning_state"] != "Succeeded":
            assert time.monotonic() < deadline, svc.show_deployment("host-ep", "blue")
            await asyncio.sleep(0.05)
        svc.update_endpoint("host-ep", traffic={"blue": 100})
        yield app, svc.credentials("host-ep")["primary_key"], ws


def _client(app, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}", timeout=30)


async def test_a_host_name_per_endpoint_serves_its_routes_through_the_guard(served):
    app, key, ws = served
    auth = {"Authorization": f"Bearer {key}"}
    async with _client(app, "host-ep.localhost:8765") as c:
        r = await c.post("/score", json=SCORE, headers=auth)
        assert r.status_code == 200 and r.json() == {"output": "H"}, r.text
        assert r.headers["azureml-model-deployment"] == "blue"
        r = await c.post("/v1/chat/completions", headers=auth,
                         json={"model": "any", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "H"
        assert [m["id"] for m in (await c.get("/v1/models", headers=auth)).json()["data"]] == ["blue", "fake:1"]
        # the guard saw /endpoints/host-ep/score: no key is its 401, a body past the endpoint's cap its 413
        assert (await c.post("/score", json=SCORE)).status_code == 401
        big = SCORE | {"pad": "x" * 5000}
        assert (await c.post("/score", json=big, headers=auth)).status_code == 413
        # an endpoint's host reaches its own routes only: not the control plane, not another endpoint
        admin = {"Authorization": f"Bearer {ws.admin_token()}"}
        assert (await c.get("/api/endpoints", headers=admin)).status_code == 404
        assert (await c.post("/endpoints/host-ep/score", json=SCORE, headers=auth)).status_code == 404
    async with _client(app, "HOST-EP.localhost") as c:  # host names ignore case
        assert (await c.post("/score", json=SCORE, headers=auth)).json() == {"output": "H"}
    async with _client(app, "nope-ep.localhost") as c:  # as for any unknown endpoint: the wrong key's 401
        assert (await c.post("/score", json=SCORE, headers=auth)).status_code == 401
    async with _client(app, "127.0.0.1:8765") as c:  # any other host: the server's own paths
        admin = {"Authorization": f"Bearer {ws.admin_token()}"}
        assert (await c.post("/score", json=SCORE, headers=admin)).status_code == 404
        assert (await c.post("/endpoints/host-ep/score", json=SCORE, headers=auth)).json() == {"output": "H"}


async def test_host_names_follow_the_configured_domain(monkeypatch):
    ws = Workspace.open()
    for domain, host, routed in (("ml.example.com", "host-ep.ml.example.com", True),
                                 ("ml.example.com", "host-ep.localhost", False), ("", "host-ep.localhost", False)):
        app = create_app(ws, background=False, endpoint_domain=domain)
        async with app.router.lifespan_context(app):
            if not app.state.ff.endpoints.addresses():
                app.state.ff.endpoints.create_endpoint("host-ep")
            key = app.state.ff.endpoints.credentials("host-ep")["primary_key"]
            shown = app.state.ff.endpoints.show_endpoint("host-ep")["host_scoring_uri"]
            assert shown == (f"http://host-ep.{domain}:8765/score" if domain else None)
            async with _client(app, host) as c:
                r = await c.post("/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
            # routed: the endpoint, which has no deployment taking traffic yet (404 saying so); else a control-plane
            # path, where the endpoint's key is no credential
            if routed:
                assert r.status_code == 404 and "no deployment with traffic" in r.text, (domain, host, r.text)
            else:
                assert r.status_code == 401 and "owner token" in r.text, (domain, host, r.text)


async def _post(port: int, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(f"http://127.0.0.1:{port}/score", json=SCORE, headers=headers)


async def _refused(port: int) -> bool:
    try:
        await _post(port, None)
    except httpx.ConnectError:
        return True
    return False


async def test_a_port_per_endpoint_opens_moves_and_closes_with_the_endpoint(served):
    app, key, ws = served
    ff = app.state.ff
    port, other = free_endpoint_ports(2)
    shown = ff.endpoints.update_endpoint("host-ep", port=port)
    assert shown["port"] == port and shown["port_scoring_uri"] == f"http://127.0.0.1:{port}/score"
    await ff.ports.sync()
    assert ff.ports.listening() == {port: "host-ep"}
    r = await _post(port, key)
    assert r.status_code == 200 and r.json() == {"output": "H"}
    assert (await _post(port, None)).status_code == 401
    assert (await _post(port, "wrong")).status_code == 401

    ff.endpoints.create_endpoint("second-ep")
    with pytest.raises(Conflict) as err:  # unique across endpoints
        ff.endpoints.update_endpoint("second-ep", port=port)
    assert err.value.field == "port"
    wide = create_app(ws, background=False, endpoint_port_range="8000-9999").state.ff.endpoints
    with pytest.raises(Conflict):  # not the server's own port, even in the range
        wide.update_endpoint("second-ep", port=8765)

    ff.endpoints.update_endpoint("host-ep", port=other)  # a new port: the old one closes
    await ff.ports.sync()
    assert ff.ports.listening() == {other: "host-ep"}
    assert await _refused(port)
    assert (await _post(other, key)).json() == {"output": "H"}

    ff.endpoints.update_endpoint("host-ep", port=None)  # the port handed to another endpoint moves in place
    ff.endpoints.update_endpoint("second-ep", port=other)
    await ff.ports.sync()
    assert ff.ports.listening() == {other: "second-ep"}
    assert (await _post(other, key)).status_code == 401  # host-ep's key is not second-ep's

    ff.endpoints.delete_endpoint("second-ep")
    await ff.ports.sync()
    assert ff.ports.listening() == {} and await _refused(other)


async def test_a_port_that_cannot_be_bound_is_logged_and_tried_again(served, caplog):
    app, key, _ = served
    ff = app.state.ff
    port = free_endpoint_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    ff.endpoints.update_endpoint("host-ep", port=port)
    await ff.ports.sync()
    assert ff.ports.listening() == {} and port in ff.ports.failures()
    assert f"cannot listen on port {port} for endpoint host-ep" in caplog.text
    async with _client(app, "127.0.0.1") as c:  # the server goes on serving
        r = await c.post("/endpoints/host-ep/score", json=SCORE, headers={"Authorization": f"Bearer {key}"})
        assert r.json() == {"output": "H"}
    holder.close()
    await ff.ports.sync()  # RETRY_S is 0 here
    assert ff.ports.listening() == {port: "host-ep"} and ff.ports.failures() == {}
    assert (await _post(port, key)).json() == {"output": "H"}


async def test_two_servers_on_one_host_one_listens_the_other_takes_over(served):
    """Two servers on one host cannot both bind an endpoint's port: the one that came second keeps trying and
    listens once the first stops."""
    app, key, _ = served
    ff = app.state.ff
    port = free_endpoint_port()
    ff.endpoints.update_endpoint("host-ep", port=port)
    await ff.ports.sync()
    second = endpoint_addresses.PortListeners(app, "127.0.0.1", ff.addresses, ff.endpoints.ports)
    await second.sync()
    assert second.listening() == {} and port in second.failures()
    await ff.ports.stop()
    await second.sync()
    try:
        assert second.listening() == {port: "host-ep"}
        assert (await _post(port, key)).json() == {"output": "H"}
    finally:
        await second.stop()


def test_two_servers_giving_one_port_at_once_is_a_conflict_on_both_databases(database_url, monkeypatch):
    """The store's unique index settles a race the check before the write cannot see (another server wrote the
    same port in between): a 409 naming `port`, never a 500, on create and on update."""
    svc = create_app(Workspace.open(), background=False).state.ff.endpoints
    port = free_endpoint_port()
    svc.create_endpoint("first-ep", port=port)
    svc.create_endpoint("second-ep")
    monkeypatch.setattr("forgeflow.serving.endpoint_hosts.check_port_free", lambda *a: None)  # the race's blind spot
    for attempt in (lambda: svc.update_endpoint("second-ep", port=port),
                    lambda: svc.create_endpoint("third-ep", port=port)):
        with pytest.raises(Conflict) as err:
            attempt()
        assert err.value.field == "port" and str(port) in err.value.message
    assert svc.addresses() == {"first-ep": port, "second-ep": None}
    with pytest.raises(Conflict) as err:  # a name taken is still said as such
        svc.create_endpoint("first-ep", port=free_endpoint_port())
    assert err.value.field == "name"


async def test_the_rest_api_sets_keeps_and_clears_a_port_and_refuses_bad_ones():
    ws = Workspace.open()
    app = create_app(ws, background=False)
    admin = {"Authorization": f"Bearer {ws.admin_token()}"}
    async with app.router.lifespan_context(app), _client(app, "127.0.0.1") as c:
        for bad in ("70000", "0", "true", "\"9001\"", "1.5", "NaN", "1e999", "22", "5432", "40000"):
            r = await c.post("/api/endpoints", content='{"name": "rest-ep", "port": %s}' % bad,
                             headers=admin | {"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["field"] == "port", (bad, r.text)
        port = free_endpoint_port()
        r = await c.post("/api/endpoints", json={"name": "rest-ep", "port": port}, headers=admin)
        assert r.status_code == 201 and r.json()["port_scoring_uri"] == f"http://127.0.0.1:{port}/score"
        r = await c.patch("/api/endpoints/rest-ep", json={"description": "kept"}, headers=admin)
        assert r.json()["port"] == port
        r = await c.patch("/api/endpoints/rest-ep", json={"port": None}, headers=admin)
        assert r.json()["port"] is None and r.json()["port_scoring_uri"] is None
        r = await c.get("/api/endpoints/rest-ep", headers=admin)
        assert r.json()["host_scoring_uri"] == "http://rest-ep.localhost:8765/score"


async def test_the_range_is_the_serving_servers_own(served):
    """A server started with another range takes ports in it and refuses the default's; and never listens on a
    port outside its own range, whichever server gave it."""
    app, _, ws = served
    admin = {"Authorization": f"Bearer {ws.admin_token()}"}
    other = create_app(ws, background=False, endpoint_port_range="20000-20099")
    async with other.router.lifespan_context(other), _client(other, "127.0.0.1") as c:
        r = await c.post("/api/endpoints", json={"name": "range-ep", "port": 20050}, headers=admin)
        assert r.status_code == 201 and r.json()["port"] == 20050, r.text
        r = await c.patch("/api/endpoints/range-ep", json={"port": 9001}, headers=admin)
        assert r.status_code == 400 and r.json()["field"] == "port" and "20000-20099" in r.json()["message"]
    ff = app.state.ff
    await ff.ports.sync()
    assert 20050 not in ff.ports.listening() and "--endpoint-ports" in ff.ports.failures()[20050]
    await ff.ports.sync()  # said once, not tried again
    assert ff.ports.failures()[20050].startswith("outside")
