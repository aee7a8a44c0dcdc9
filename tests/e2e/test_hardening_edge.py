"""The server's edge for real: `forgeflow serve` on loopback, spoken to over raw sockets so that what is sent,
what is answered and what happens to the connection are all visible."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.integration

HUNDRED_MB = 100 * 1024 * 1024


def _connect(url: str) -> socket.socket:
    u = urlparse(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    return sock


def _request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a whole response came: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of a response"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _admin_token() -> str:
    from forgeflow.store.workspace import Workspace

    return Workspace.open().admin_token()


def test_large_bodies_are_answered_before_they_are_sent(live_server):
    """issue 10, finding 3: a request declaring 100 MB is answered (401 without a credential, 413 over the cap)
    with only its headers sent, and the connection is then closed rather than drained."""
    token = _admin_token()
    admin = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{live_server.url}/api/endpoints", json={"name": "edge-ep", "max_body_bytes": 4096}, headers=admin)
    key = httpx.get(f"{live_server.url}/api/endpoints/edge-ep/credentials", headers=admin).json()["primary_key"]
    cases = [
        ("POST", "/api/endpoints", {"Content-Type": "text/plain"}, 401),
        ("PUT", "/api/datasets/huge.jsonl", {}, 401),
        ("POST", "/api/endpoints", admin | {"Content-Type": "application/json"}, 413),
        ("POST", "/endpoints/edge-ep/score", {"Content-Type": "application/json"}, 401),
        ("POST", "/endpoints/edge-ep/score", {"Authorization": f"Bearer {key}"}, 413),
        ("POST", "/endpoints/edge-ep/v1/chat/completions", {"Authorization": "Bearer wrong"}, 401),
    ]
    for method, path, headers, expected in cases:
        with _connect(live_server.url) as sock:
            sock.sendall(_request(method, path, headers | {"Content-Length": str(HUNDRED_MB)}))  # no body byte
            status, answer_headers, body = _response(sock)
            assert status == expected, (path, status, body)
            assert json.loads(body)  # a JSON error body
            assert answer_headers.get("connection") == "close" and _closed(sock), path


def test_a_refusal_keeps_the_connection_when_the_body_was_read_or_is_small(live_server):
    """issue 10, finding 6: a 4xx does not close a keep-alive connection where the body was read (bad JSON) or is
    small enough to discard unread (a 401, a 413 from the endpoint's cap); the next request on it is answered."""
    token = _admin_token()
    admin = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{live_server.url}/api/endpoints", json={"name": "alive-ep", "max_body_bytes": 4096}, headers=admin)
    key = httpx.get(f"{live_server.url}/api/endpoints/alive-ep/credentials", headers=admin).json()["primary_key"]
    bad_json = b"{not json"
    small = json.dumps({"name": "never-made"}).encode()
    over_cap = b'{"x": "' + b"a" * 5000 + b'"}'
    with _connect(live_server.url) as sock:
        for method, path, headers, body, expected in (
            ("POST", "/api/endpoints", admin | {"Content-Type": "application/json"}, bad_json, 400),
            ("POST", "/api/endpoints", {"Content-Type": "application/json"}, small, 401),
            ("POST", "/api/endpoints", {"Authorization": "Bearer wrong"}, small, 401),
            ("POST", "/endpoints/alive-ep/score", {"Authorization": f"Bearer {key}"}, over_cap, 413),
            ("POST", "/endpoints/alive-ep/score", {"Authorization": f"Bearer {key}"}, bad_json, 400),
        ):
            sock.sendall(_request(method, path, headers | {"Content-Length": str(len(body))}, body))
            status, answer_headers, _ = _response(sock)
            assert status == expected and answer_headers.get("connection") != "close", (path, status)
            sock.sendall(_request("GET", "/api/health"))
            status, _, body = _response(sock)
            assert status == 200 and json.loads(body)["status"] == "ok"
    assert httpx.get(f"{live_server.url}/api/endpoints/never-made", headers=admin).status_code == 404


def test_token_rotate_ends_the_old_token_and_every_session(live_server):
    """issue 10, finding 4: `forgeflow token rotate` (through the running server, or on the workspace when none
    runs) makes a new admin token; the old one and every Studio session stop working, across restarts."""
    old = _admin_token()
    studio = httpx.Client(base_url=live_server.url)
    assert studio.post("/api/session", json={"token": old}).status_code == 200
    assert studio.get("/api/jobs", headers={"X-Forgeflow-Studio": "1"}).status_code == 200

    rotated = live_server.cli_json("token", "rotate")
    new = rotated["token"]
    assert new != old and rotated["server"] == live_server.url and rotated["sessions_ended"] == 1
    assert httpx.get(f"{live_server.url}/api/jobs", headers={"Authorization": f"Bearer {old}"}).status_code == 401
    assert httpx.get(f"{live_server.url}/api/jobs", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert studio.get("/api/jobs", headers={"X-Forgeflow-Studio": "1"}).status_code == 401
    assert live_server.cli("token", "show").stdout.strip() == new

    live_server.stop()
    offline = live_server.cli_json("token", "rotate")
    assert offline["server"] is None and offline["token"] not in (old, new)
    live_server.start()
    for gone in (old, new):
        assert httpx.get(f"{live_server.url}/api/jobs", headers={"Authorization": f"Bearer {gone}"}).status_code == 401
    newest = {"Authorization": f"Bearer {offline['token']}"}
    assert httpx.get(f"{live_server.url}/api/jobs", headers=newest).status_code == 200
    assert studio.get("/api/jobs", headers={"X-Forgeflow-Studio": "1"}).status_code == 401
    studio.close()


def test_forwarded_headers_from_a_client_are_not_believed(live_server):
    """issue 10, finding 1 (review): `forgeflow serve` takes its client's address and scheme from the connection,
    never from X-Forwarded-For or X-Forwarded-Proto: a sign-in over plain HTTP claiming HTTPS gets no `Secure`
    cookie, and wrong tokens each claiming another client address still reach the failed-credential limit."""
    token = _admin_token()
    signin = httpx.post(f"{live_server.url}/api/session", json={"token": token},
                        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
    assert signin.status_code == 200, signin.text
    attributes = {a.strip().split("=")[0].lower() for a in signin.headers["set-cookie"].split(";")[1:]}
    assert "httponly" in attributes and "secure" not in attributes, signin.headers["set-cookie"]

    statuses = [httpx.get(f"{live_server.url}/api/jobs", timeout=30,
                          headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"10.0.0.{i}"}).status_code
                for i in range(12)]
    assert statuses == [401] * 10 + [429] * 2, statuses
    # the limit counts failures only: the right token still gets in from the same address
    assert httpx.get(f"{live_server.url}/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
