"""An endpoint at a URL whose path is exactly /score, as Azure's are, on a real `forgeflow serve` with the tiny
model: on a port of its own (every server listens there) and on its own host name (the Host header), and
langchain-community's AzureMLChatOnlineEndpoint, which insists on that path, answering through it."""

from __future__ import annotations

import socket
import warnings

import httpx
import pytest
from endpoint_ports import free_endpoint_ports
from waiting import wait_until

pytestmark = pytest.mark.integration

BODY = {"input_data": {"input_string": [{"role": "user", "content": "hi"}], "parameters": {"max_new_tokens": 4}}}


def _score(url: str, key: str | None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url, json=BODY, headers=headers | kw.pop("headers", {}), timeout=60, **kw)


def _answers(url: str, key: str) -> bool:
    try:
        return _score(url, key).status_code == 200
    except httpx.ConnectError:
        return False


def _closed(url: str) -> bool:
    try:
        _score(url, None)
    except httpx.ConnectError:
        return True
    return False


def _raw_status(port: int, request_line: str, hosts: tuple[str, ...]) -> int:
    """The status a request with these Host headers gets, sent as raw bytes (HTTP clients send one Host)."""
    head = f"{request_line} HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        return int(sock.makefile("rb").readline().split()[1])


def test_an_endpoint_answers_at_path_score_on_its_port_and_host_name(live_server, tiny_model_dir):
    with warnings.catch_warnings():  # langchain-community's notices about its own future
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.chat_models.azureml_endpoint import (AzureMLChatOnlineEndpoint,
                                                                      CustomOpenAIChatContentFormatter)

    s = live_server
    port, moved = free_endpoint_ports(2)
    s.cli("online-endpoint", "create", "--name", "azure-ep", "--set", f"port={port}")
    dep = s.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "azure-ep",
                     "--model", str(tiny_model_dir), "--all-traffic")
    assert dep["provisioning_state"] == "Succeeded", dep
    shown = s.cli_json("online-endpoint", "show", "--name", "azure-ep")
    main_port = httpx.URL(s.url).port
    assert shown["scoring_uri"] == f"{s.url}/endpoints/azure-ep/score"
    assert shown["port"] == port and shown["port_scoring_uri"] == f"http://127.0.0.1:{port}/score"
    assert shown["host_scoring_uri"] == f"http://azure-ep.localhost:{main_port}/score"
    key = s.cli_json("online-endpoint", "get-credentials", "--name", "azure-ep")["primary_key"]
    url = shown["port_scoring_uri"]

    wait_until(lambda: _answers(url, key), timeout=30, what=f"endpoint azure-ep answering on port {port}")
    r = _score(url, key)
    assert r.status_code == 200 and isinstance(r.json()["output"], str)
    assert r.headers["azureml-model-deployment"] == "blue"
    assert _score(url, None).status_code == 401
    assert _score(url, "not-the-key").status_code == 401

    # Its host name, as a reverse proxy or wildcard DNS would send it to the server's own port.
    r = _score(f"{s.url}/score", key, headers={"Host": f"azure-ep.localhost:{main_port}"})
    assert r.status_code == 200 and isinstance(r.json()["output"], str)
    assert _score(f"{s.url}/score", None, headers={"Host": "azure-ep.localhost"}).status_code == 401
    # two Host headers (RFC 9112 3.2): a 400 in either order, neither the control plane nor the endpoint
    for hosts in ((f"127.0.0.1:{main_port}", "azure-ep.localhost"), ("azure-ep.localhost", f"127.0.0.1:{main_port}")):
        assert _raw_status(main_port, "GET /api/health", hosts) == 400
        assert _raw_status(port, "GET /info", hosts) == 400

    chat = AzureMLChatOnlineEndpoint(endpoint_url=url, endpoint_api_type="dedicated", endpoint_api_key=key,
                                     content_formatter=CustomOpenAIChatContentFormatter(),
                                     model_kwargs={"max_new_tokens": 4})
    answer = chat.invoke("Who founded Microsoft?")
    assert answer.type == "ai" and isinstance(answer.content, str)
    # LangChain sends `stop` among the parameters when asked to: the scoring contract takes it
    assert isinstance(chat.invoke("Who founded Microsoft?", stop=["\n"]).content, str)

    # A new port: the old one closes, the new one answers; deleting the endpoint closes it.
    s.cli("online-endpoint", "update", "--name", "azure-ep", "--set", f"port={moved}")
    new_url = f"http://127.0.0.1:{moved}/score"
    wait_until(lambda: _answers(new_url, key), timeout=30, what=f"endpoint azure-ep answering on port {moved}")
    wait_until(lambda: _closed(url), timeout=30, what=f"port {port} closing")
    s.cli("online-endpoint", "update", "--name", "azure-ep", "--traffic", "blue=0")
    s.cli("online-deployment", "delete", "--name", "blue", "--endpoint-name", "azure-ep")
    s.cli("online-endpoint", "delete", "--name", "azure-ep", "--yes")
    wait_until(lambda: _closed(new_url), timeout=30, what=f"port {moved} closing with its endpoint")
    assert httpx.get(f"{s.url}/api/health", timeout=10).status_code == 200


def test_a_second_server_on_the_host_takes_the_port_over_when_the_first_is_gone(forgeflow_home, tiny_model_dir):
    """Every server listens on every endpoint's port, but two on one host cannot both bind it: the one that came
    second logs that and keeps trying, and serves the port once the first is gone."""
    from live_server import LiveServer

    first, second = LiveServer.on_loopback(forgeflow_home), LiveServer.on_loopback(forgeflow_home)
    log = forgeflow_home / "test-server.log"  # both servers write here
    try:
        first.start()
        port = free_endpoint_ports()[0]
        first.cli("online-endpoint", "create", "--name", "pair-ep", "--set", f"port={port}")
        dep = first.cli_json("online-deployment", "create", "--name", "blue", "--endpoint-name", "pair-ep",
                             "--model", str(tiny_model_dir), "--all-traffic")
        assert dep["provisioning_state"] == "Succeeded", dep
        key = first.cli_json("online-endpoint", "get-credentials", "--name", "pair-ep")["primary_key"]
        url = f"http://127.0.0.1:{port}/score"
        wait_until(lambda: _answers(url, key), timeout=30, what="the first server answering on the port")

        second.start()
        wait_until(lambda: f"cannot listen on port {port} for endpoint pair-ep" in log.read_text(), timeout=30,
                   what="the second server saying it cannot bind the port")
        assert _score(f"{second.url}/endpoints/pair-ep/score", key).status_code == 200  # it serves all the same

        first.proc.kill()  # the leader, holding the port, goes without a word
        first.proc.wait(10)
        wait_until(lambda: _answers(url, key), timeout=180, what="the second server answering on the port")
    finally:
        second.stop()
        first.stop()
