"""Instances as the gateway alone may reach them: each with its own secret, rotated when it restarts; gone
with the server that started them; and a stream that breaks off told to the client as an error."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import aiohttp
import httpx
import openai
import pytest
from gateway_harness import CHAT, FAST_PROBES, FakePlacement, post, wait_until

from forgeflow.errors import RequestTimeout
from forgeflow.processes import LIFELINE_FD_ENV, pid_alive, start_time
from forgeflow.serving.metrics import Metrics
from forgeflow.serving.placement import LocalPlacement
from forgeflow.serving.records import Deployment
from forgeflow.serving.relay import relay
from forgeflow.serving.schemas import Dialect
from forgeflow.serving.specs import FLOW_RUNTIME, SCORING_MAX_BYTES
from forgeflow.store.home import Paths
from forgeflow.store.states import DeploymentState



def test_the_gateway_holds_each_instance_secret_and_a_restart_rotates_it(gateway):
    """issue 10, finding 1: an instance refuses anyone without its secret; the gateway and the probes send
    it; `show` lists the instance's address, never the secret; a restarted instance has a fresh one and
    refuses the old."""
    key = gateway.endpoint("sec-ep")
    gateway.deploy("sec-ep", "blue", {"output": "B"})
    gateway.svc.update_endpoint("sec-ep", traffic={"blue": 100})
    [old] = gateway.svc.supervisor.instances("sec-ep", "blue")
    assert httpx.get(f"{old.url}/health", timeout=5).status_code == 401
    assert httpx.post(f"{old.url}/score", json={}, headers={"Authorization": f"Bearer {key}"},
                      timeout=5).status_code == 401  # the endpoint's key opens the gateway, not the instance
    assert post(gateway, "sec-ep", key).json() == {"output": "B"}

    shown = httpx.get(f"{gateway.url}/api/endpoints/sec-ep/deployments/blue", headers=gateway.admin).json()
    assert [i["url"] for i in shown["instances"]] == [old.url]
    assert old.secret not in json.dumps(shown) and old.secret not in repr(old)
    assert old.secret.encode() not in b"".join(open(f"/proc/{old.proc.pid}/cmdline", "rb"))

    os.kill(old.proc.pid, signal.SIGKILL)
    fresh = wait_until(lambda: [i for i in gateway.svc.supervisor.ready_instances("sec-ep", "blue") if i.restarts == 1])[0]
    assert fresh.secret != old.secret
    assert httpx.get(f"{fresh.url}/health", headers=old.auth, timeout=5).status_code == 401
    assert httpx.get(f"{fresh.url}/health", headers=fresh.auth, timeout=5).status_code == 200
    assert post(gateway, "sec-ep", key).json() == {"output": "B"}


def _deployment(name: str) -> Deployment:
    return Deployment(endpoint="left-ep", name=name, model_ref="fake:1", model_path="{}", runtime="transformers",
                      instance_count=1, request_settings={}, liveness_probe=FAST_PROBES, readiness_probe=FAST_PROBES,
                      state=DeploymentState.CREATING, error=None, created_at="", updated_at=None)


def test_an_instance_exits_when_its_lifeline_closes():
    """issue 10, finding 2: `exit_with_parent` ends the process once the write end of its lifeline pipe
    closes, which the kernel does when the server holding it dies, kill -9 included."""
    read_end, lifeline = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", "from forgeflow.processes import exit_with_parent; exit_with_parent(); "
                               "import time; print('up', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, pass_fds=(read_end,), env=dict(os.environ, **{LIFELINE_FD_ENV: str(read_end)}))
    os.close(read_end)
    try:
        assert child.stdout.readline() == "up\n"
        assert child.poll() is None
        os.close(lifeline)
        assert child.wait(timeout=20) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


# An earlier server: starts one fake instance of the deployment given as a row, says its pid, and waits to be killed.
_EARLIER_SERVER = """
import json, os, sys, time
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]  # tests/serving and tests (the shared helpers)
from gateway_harness import FakePlacement
from forgeflow.serving.records import Deployment
from forgeflow.store.home import Paths
[inst] = FakePlacement(Paths.current()).start(Deployment.from_row(json.loads(sys.argv[2])), [0])
print(inst.proc.pid, flush=True)
time.sleep(120)
"""


def test_a_starting_server_stops_the_instances_an_earlier_one_left():
    """issue 10, finding 2: an instance that could not act on its lifeline (here: stopped) is stopped by
    the next server of the workspace once the server that started it is gone (kill -9); a recorded pid that
    now names another process is never signalled."""
    paths = Paths.current()
    earlier = subprocess.Popen([sys.executable, "-c", _EARLIER_SERVER, os.path.dirname(__file__),
                                json.dumps(_deployment("blue").row())], stdout=subprocess.PIPE, text=True)
    left = int(earlier.stdout.readline())
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    records = paths.root / "run" / "instances"
    try:
        wait_until(lambda: "READY" in (paths.logs / "deployments" / "left-ep" / "blue-0.log").read_text())
        os.kill(left, signal.SIGSTOP)
        earlier.kill()
        earlier.wait()
        assert pid_alive(left)
        # two records naming the bystander's pid, as if it had been reused: one started at another time,
        # one with other arguments
        argv = ["python", "-c", "import time; time.sleep(120)"]
        (records / "reused-a.json").write_text(json.dumps(
            {"pid": bystander.pid, "start_time": start_time(bystander.pid) + 1, "argv": bystander.args}))
        (records / "reused-b.json").write_text(json.dumps(
            {"pid": bystander.pid, "start_time": start_time(bystander.pid), "argv": argv}))
        assert len(list(records.glob("*.json"))) == 3

        assert FakePlacement(paths).stop_leftovers() == 1
        wait_until(lambda: not pid_alive(left))
        assert bystander.poll() is None
        assert list(records.glob("*.json")) == []
    finally:
        if pid_alive(left):
            os.kill(left, signal.SIGKILL)
        earlier.kill()
        earlier.wait()
        earlier.stdout.close()
        bystander.kill()
        bystander.wait()


def test_a_second_server_leaves_the_instances_of_a_running_one_alone():
    """issue 10, finding 2 (review): a server starting on a workspace whose other server still runs stops none
    of that server's instances, stopped ones included; an instance whose recorded owner is another process
    than the one now holding that pid (the owner died, its pid was reused) is a leftover and is stopped."""
    paths = Paths.current()
    first = FakePlacement(paths)
    [kept, orphan] = first.start(_deployment("blue"), [0, 1])
    try:
        wait_until(lambda: all("READY" in i.log_path.read_text() for i in (kept, orphan)))
        os.kill(kept.proc.pid, signal.SIGSTOP)  # even one that could not act on a lifeline is left alone
        assert FakePlacement(paths).stop_leftovers() == 0
        assert kept.proc.poll() is None and orphan.proc.poll() is None
        assert kept.record.exists() and orphan.record.exists()

        record = json.loads(orphan.record.read_text())
        assert (record["owner_pid"], record["owner_start_time"]) == (os.getpid(), start_time(os.getpid()))
        orphan.record.write_text(json.dumps(record | {"owner_start_time": record["owner_start_time"] - 1}))
        assert FakePlacement(paths).stop_leftovers() == 1
        assert orphan.proc.wait(timeout=20) is not None
        assert kept.proc.poll() is None and kept.record.exists() and not orphan.record.exists()
    finally:
        first.stop([kept, orphan], grace_s=0)


def test_a_broken_stream_ends_with_an_error_event_not_done(gateway):
    """issue 10, finding 8: the instance dies mid-stream; the client, which already has its 200, gets the
    chunks that arrived, then an error event and no `data: [DONE]`; the metrics count a 424."""
    key = gateway.endpoint("cut-ep")
    gateway.deploy("cut-ep", "blue", {"output": "tok", "chunks": 5, "die_after": 2})
    gateway.svc.update_endpoint("cut-ep", traffic={"blue": 100})
    r = post(gateway, "cut-ep", key, CHAT | {"stream": True}, path="v1/chat/completions")
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert "[DONE]" not in r.text
    assert [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]] == ["tok0 ", "tok1 "]
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "UpstreamError" and "incomplete" in error["message"]
    metrics = httpx.get(f"{gateway.url}/metrics", headers=gateway.admin).text
    assert 'forgeflow_requests_total{endpoint="cut-ep",deployment="blue",code="424"} 1' in metrics
    assert gateway.svc.admission.pending(("cut-ep", "blue")) == 0

    wait_until(lambda: [i for i in gateway.svc.supervisor.ready_instances("cut-ep", "blue") if i.restarts == 1])
    shown = httpx.get(f"{gateway.url}/api/endpoints/cut-ep", headers=gateway.admin).json()
    client = openai.OpenAI(api_key=key, base_url=shown["openai_base_url"], max_retries=0)
    stream = client.chat.completions.create(model="blue", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError, match="incomplete"):
        for _ in stream:
            pass


def test_a_half_received_event_is_never_passed_on():
    """issue 10, finding 8: bytes of an event cut off by the break are dropped, so the error event is the
    next thing the client parses."""

    class Body:
        async def iter_any(self):
            yield b'data: {"choices": [{"delta": {"content": "a"}}]}\n\ndata: {"choi'
            raise aiohttp.ClientPayloadError("Response payload is not completed")

    class Cut:
        content = Body()

    class Release:
        tokens, usage, status, calls, failed = 0, None, 499, 0, False

        async def __call__(self):
            self.calls += 1

    done = Release()
    call = SimpleNamespace(svc=SimpleNamespace(metrics=Metrics()), endpoint="e", deployment="d",
                           started=time.perf_counter(), dialect=Dialect.OPENAI)

    async def collect():
        return [chunk async for chunk in relay(call, Cut(), done, RequestTimeout("too slow"))]

    out = b"".join(asyncio.run(collect()))
    events = out.decode().split("\n\n")
    assert events[0] == 'data: {"choices": [{"delta": {"content": "a"}}]}'
    assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "UpstreamError"
    assert events[2:] == [""] and done.status == 424 and done.tokens == 1 and done.calls == 1


def test_a_flow_instance_serves_only_its_gateway_and_exits_with_it(tmp_path):
    """issue 10, findings 1 and 2: `python -m forgeflow.flows.serve`, as a flow deployment's instance, guards
    every route like a model server and exits when the server holding its lifeline is gone."""
    from forgeflow.processes import INSTANCE_SECRET_ENV, free_port

    flow = tmp_path / "echo-flow"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  question:\n    type: string\noutputs:\n  answer:\n    type: string\n    reference: ${echo.output}\n"
        "nodes:\n- name: echo\n  type: python\n  source: {type: code, path: echo.py}\n"
        "  inputs:\n    text: ${inputs.question}\n")
    (flow / "echo.py").write_text("from promptflow import tool\n\n@tool\ndef echo(text: str) -> str:\n    return text\n")
    port = free_port()
    argv = [sys.executable, "-m", "forgeflow.flows.serve", "--flow", str(flow), "--port", str(port),
            "--max-body-bytes", "2048"]
    env = {k: v for k, v in os.environ.items() if k != INSTANCE_SECRET_ENV}
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and INSTANCE_SECRET_ENV in refused.stdout

    read_end, lifeline = os.pipe()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, pass_fds=(read_end,),
                            env=env | {INSTANCE_SECRET_ENV: "flow-secret", LIFELINE_FD_ENV: str(read_end)})
    os.close(read_end)
    try:
        assert proc.stdout.readline().strip() == f"READY {port}"
        base, key = f"http://127.0.0.1:{port}", {"Authorization": "Bearer flow-secret"}
        assert wait_until(lambda: _answers(f"{base}/health", key))
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert httpx.get(f"{base}/health", headers=headers, timeout=5).status_code == 401
            assert httpx.post(f"{base}/score", json={"question": "q"}, headers=headers, timeout=5).status_code == 401
        rebound = httpx.post(f"{base}/score", json={"question": "q"}, headers=key | {"Host": "evil.example"},
                             timeout=5)
        assert rebound.status_code == 400 and rebound.json()["field"] == "host"
        assert httpx.post(f"{base}/score", json={"question": "x" * 3000}, headers=key, timeout=5).status_code == 413
        answer = httpx.post(f"{base}/score", json={"question": "q"}, headers=key, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"answer": "q"}
        os.close(lifeline)
        lifeline = -1
        assert proc.wait(timeout=30) is not None
    finally:
        if lifeline >= 0:
            os.close(lifeline)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _answers(url: str, headers: dict) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_an_instance_refusing_the_gateway_is_not_the_callers_401(gateway):
    """issue 10, finding 1: if what answers on an instance's port refuses the gateway's instance key (another
    process took the port), the caller, whose endpoint key is right, gets a 424, not a 401."""
    key = gateway.endpoint("port-ep")
    slow = {"initial_delay": 0.0, "period": 3.0, "timeout": 0.5, "failure_threshold": 5, "success_threshold": 1}
    gateway.deploy("port-ep", "blue", probes=slow)
    gateway.svc.update_endpoint("port-ep", traffic={"blue": 100})
    assert post(gateway, "port-ep", key).status_code == 200
    [inst] = gateway.svc.supervisor.instances("port-ep", "blue")
    inst.secret = "the-secret-of-a-process-long-gone"
    r = post(gateway, "port-ep", key)
    assert r.status_code == 424 and r.headers["ms-azureml-model-error-reason"] == "model_server_refused", r.text


def test_an_instance_takes_every_body_its_endpoint_takes(gateway, tmp_path, monkeypatch):
    """issue 10, finding 3 (review): an endpoint may take bodies up to the scoring cap, larger than an instance's
    default limit; an instance started as the placement starts it (its real command line, here a flow's) takes
    a 20 MiB body that an endpoint with max_body_bytes 32 MiB let through; a model server is started the same."""
    from forgeflow.inference.model_server import _parse_args

    argv = LocalPlacement(Paths.current()).command(_deployment("green"), 1234)
    assert argv[1:3] == ["-m", "forgeflow.inference.model_server"]
    assert _parse_args(argv[3:]).max_body_bytes == SCORING_MAX_BYTES

    monkeypatch.setattr(FakePlacement, "command", LocalPlacement.command)
    flow = tmp_path / "length-flow"
    flow.mkdir()
    (flow / "flow.dag.yaml").write_text(
        "inputs:\n  question:\n    type: string\noutputs:\n  length:\n    type: string\n    reference: ${count.output}\n"
        "nodes:\n- name: count\n  type: python\n  source: {type: code, path: count.py}\n"
        "  inputs:\n    text: ${inputs.question}\n")
    (flow / "count.py").write_text("from promptflow import tool\n\n@tool\ndef count(text: str) -> str:\n"
                                   "    return str(len(text))\n")
    key = gateway.endpoint("big-ep", max_body_bytes=32 * 1024 * 1024)
    gateway.svc.create_deployment("big-ep", "blue", "flow:1", flow, runtime=FLOW_RUNTIME)
    gateway.wait("big-ep", "blue", timeout=90)
    gateway.svc.update_endpoint("big-ep", traffic={"blue": 100})
    question = "x" * (20 * 1024 * 1024)
    r = post(gateway, "big-ep", key, {"question": question})
    assert r.status_code == 200, r.text[:500]
    assert r.json() == {"length": str(len(question))}


def test_an_instances_probes_share_one_client(gateway, monkeypatch):
    """Every probe of an instance goes through one HTTP client, made when its probing starts: making a client costs
    ~20 ms of CPU (its TLS context) that a probe every period took from the gateway in the same process."""
    from forgeflow.serving import supervisor

    made, probed = [], []
    client_class = httpx.Client

    class Counted(client_class):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

        def get(self, url, *args, **kwargs):
            probed.append(url)
            return super().get(url, *args, **kwargs)

    monkeypatch.setattr(supervisor.httpx, "Client", Counted)
    key = gateway.endpoint("probed-ep")
    gateway.deploy("probed-ep", "blue")
    wait_until(lambda: len(probed) >= 6, what="six probes of the instance")
    assert len(made) == 1 and made[0] == {"trust_env": False}
    assert all(url.endswith("/health") for url in probed)
    assert post(gateway, "probed-ep", key, headers={"azureml-model-deployment": "blue"}).status_code == 200
