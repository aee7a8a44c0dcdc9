"""Gateway overhead alone: the same request straight to a model server and through forgeflow's gateway.

    .venv/bin/python bench/gateway_overhead.py [--requests 1500] [--route score|openai] [--http h11|httptools]
        [--loop asyncio|uvloop]

The model server is the test suite's fake (tests/serving/fake_model_server.py: a standard-library HTTP server
that answers at once), so what is measured is the gateway's own work: HTTP parsing, routing, auth, admission,
the hop to the instance and back. A separate client process sends the requests sequentially over one
keep-alive connection with TCP_NODELAY, first all direct, then all through the gateway; it prints both p50s
and their difference. `--http` / `--loop` pick uvicorn's parser and event loop (default: what uvicorn picks,
httptools and uvloop when installed). `--route openai` sends a 1-token OpenAI chat completion to
/v1/chat/completions (the gateway then parses the chat contract) instead of a /score body.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIENT = """
import http.client, socket, statistics, sys, time
host, port, path, auth, n, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
headers = {"content-type": "application/json"} | ({"authorization": "Bearer " + auth} if auth else {})
conn = http.client.HTTPConnection(host, port)
conn.connect()
conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for i in range(n + 20):
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"{path}: HTTP {answer.status}")
    if i >= 20:
        times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1000)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--http", default="auto", help="uvicorn HTTP implementation: auto, h11, httptools")
    parser.add_argument("--loop", default="auto", help="uvicorn event loop: auto, asyncio, uvloop")
    parser.add_argument("--route", default="score", choices=("score", "openai"),
                        help="score: /score with a score body; openai: /v1/chat/completions")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="the fake model server waits this long before answering, as a model would")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["FORGEFLOW_HOME"] = tempfile.mkdtemp(prefix="ff-bench-gw-")
    sys.path[:0] = [str(ROOT / "tests" / "serving"), str(ROOT / "tests")]

    import uvicorn
    from gateway_harness import FakePlacement, Gateway

    import forgeflow.api.app as app_module
    from forgeflow.chat import score_body
    from forgeflow.processes import free_port
    from forgeflow.store.workspace import Workspace

    app_module.LocalPlacement = FakePlacement
    ws = Workspace.open()
    ws.ensure()
    port = free_port()
    app = app_module.create_app(ws, base_url=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                          http=args.http, loop=args.loop))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        gw = Gateway(url=f"http://127.0.0.1:{port}", app=app, ws=ws)
        key = gw.endpoint("bench-ep")
        gw.deploy("bench-ep", "blue", {"output": "x", "delay": args.delay_ms / 1000})
        gw.svc.update_endpoint("bench-ep", traffic={"blue": 100})
        instance = app.state.ff.supervisor.ready_instances("bench-ep", "blue")[0]
        messages = [{"role": "user", "content": "hi"}]
        if args.route == "openai":
            body, route = json.dumps({"messages": messages, "max_tokens": 1, "temperature": 0}), "/v1/chat/completions"
        else:
            body, route = json.dumps(score_body(messages, max_new_tokens=1)), "/score"

        def p50(target_port: int, path: str, auth: str) -> float:
            out = subprocess.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(target_port), path, auth,
                                  str(args.requests), body], capture_output=True, text=True, check=True)
            return float(out.stdout)

        direct = p50(instance.port, route, instance.secret)  # the instance answers only with its secret
        through = p50(port, f"/endpoints/bench-ep{route}", key)
    finally:
        server.should_exit = True
        thread.join(30)
    report = {"requests": args.requests, "route": args.route, "delay_ms": args.delay_ms, "http": args.http, "loop": args.loop, "direct_p50_ms": round(direct, 3),
              "gateway_p50_ms": round(through, 3), "overhead_p50_ms": round(through - direct, 3)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"direct p50 {direct:.3f} ms, through the gateway {through:.3f} ms: overhead {through - direct:.3f} ms "
              f"(route {args.route}, model delay {args.delay_ms} ms, uvicorn http={args.http} loop={args.loop}, {args.requests} requests)")


if __name__ == "__main__":
    main()
