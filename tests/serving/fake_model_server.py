"""A stand-in model server for gateway tests: the model server's HTTP contract (/health, /score,
/v1/chat/completions with SSE streaming) on the standard library, so it starts in a blink.

    python fake_model_server.py PORT NAME CONFIG_JSON

CONFIG_JSON keys: output (text answered, default NAME), delay (seconds per answer), fail (answer
500), refuse ([status, body]: answer that instead), load (seconds before /health is 200; -1 never), chunks
(stream chunk count), chunk_delay, die_after (stream that many chunks, then the process dies), fail_after
(stream that many chunks, then an error event and no [DONE], as an instance whose generation failed),
no_usage (a stream carries no token counts at all, only the prompt-tokens header), headers (/score answers the
headers it got, but its credential, as `headers`). GET /count
answers how many scoring requests arrived. /v1/completions answers text completions; a chat answer echoes
some parameters it received (`echo`) and the names of all of them (`received`).

Like a real instance it answers only its gateway (the secret in FORGEFLOW_INSTANCE_SECRET as a bearer
token, its own Host) and exits when its lifeline pipe (FORGEFLOW_LIFELINE_FD) closes.
"""

from __future__ import annotations

import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, NAME, CONFIG = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3] or "{}")
SECRET = os.environ.pop("FORGEFLOW_INSTANCE_SECRET", "").encode()
HOSTS = {f"127.0.0.1:{PORT}", f"localhost:{PORT}"}
STARTED = time.monotonic()
COUNT = [0]
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per answer: headers and body split in two meet Nagle's delayed ACK

    def log_message(self, *args):  # quiet
        pass

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _refused(self) -> bool:
        if self.headers.get("host") not in HOSTS:
            self._json(400, {"error": "InvalidInput", "message": "wrong Host", "field": "host"})
            return True
        given = self.headers.get("authorization", "").removeprefix("Bearer ").encode()
        if not SECRET or not hmac.compare_digest(given, SECRET):
            self._json(401, {"error": "Unauthorized", "message": "missing or wrong instance key"})
            return True
        return False

    def do_GET(self):
        if self._refused():
            return
        if self.path == "/health":
            load = CONFIG.get("load", 0)
            if load < 0 or time.monotonic() - STARTED < load:
                return self._json(503, {"status": "loading"})
            return self._json(200, {"status": "ready", "name": NAME})
        if self.path == "/count":
            return self._json(200, {"count": COUNT[0]})
        self._json(404, {"message": "no route"})

    def do_POST(self):
        if self._refused():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        with LOCK:
            COUNT[0] += 1
        time.sleep(CONFIG.get("delay", 0))
        if CONFIG.get("fail"):
            return self._json(500, {"error": "UpstreamError", "message": "generation failed: boom"})
        if CONFIG.get("refuse"):
            status, answer = CONFIG["refuse"]
            return self._json(status, answer)
        text = CONFIG.get("output", NAME)
        usage = {"x-forgeflow-prompt-tokens": "3", "x-forgeflow-completion-tokens": "2"}
        if self.path == "/score":
            if CONFIG.get("headers"):  # which of the client's headers reached the instance
                seen = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
                return self._json(200, {"output": text, "headers": seen}, usage)
            return self._json(200, {"output": text}, usage)
        completion = self.path == "/v1/completions"
        if not body.get("stream"):
            if completion:
                return self._json(200, {
                    "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": NAME,
                    "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}, usage)
            return self._json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": NAME,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                "echo": {k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "seed", "stop")},
                "received": sorted(body)}, usage)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("x-forgeflow-prompt-tokens", "3")
        self.end_headers()
        n = CONFIG.get("chunks", 3)
        for i in range(n):
            event = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                     "model": NAME, "choices": [{"index": 0, "delta": {"content": f"{text}{i} "}, "finish_reason": None}]}
            if completion:
                event |= {"object": "text_completion", "choices": [{"index": 0, "text": f"{text}{i} ",
                                                                   "finish_reason": None}]}
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            if i + 1 == CONFIG.get("die_after"):
                # the chunks written reach the gateway first, as a model's earlier tokens would have: aiohttp drops
                # what it holds unread once it sees the connection break
                time.sleep(0.2)
                os._exit(1)
            if i + 1 == CONFIG.get("fail_after"):
                error = {"message": "generation failed: boom", "type": "server_error", "param": None,
                         "code": "UpstreamError"}
                self._chunk(f"data: {json.dumps({'error': error})}\n\n".encode())
                self._chunk(b"")
                return
            time.sleep(CONFIG.get("chunk_delay", 0))
        # as an instance: the usage chunk when the client asked for it, else the usage comment for the gateway
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
        final = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": NAME,
                 "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        tail = ""
        if (body.get("stream_options") or {}).get("include_usage"):
            final["usage"] = usage
        elif not CONFIG.get("no_usage"):
            tail = f": forgeflow-usage {json.dumps(usage)}\n\n"
        self._chunk(f"data: {json.dumps(final)}\n\n{tail}data: [DONE]\n\n".encode())
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    # The real model server listens with a backlog of 2048 (model_server.py); socketserver's default of 5
    # overflows under the gateway's burst of new connections, and the kernel's SYN-cookie fallback then
    # resets some of them after the request went out (a ReadError at the gateway, then a 424).
    request_queue_size = 2048


def _exit_with_parent() -> None:
    fd = int(os.environ.get("FORGEFLOW_LIFELINE_FD") or -1)
    if fd >= 0:
        threading.Thread(target=lambda: (os.read(fd, 1), os._exit(0)), daemon=True).start()


if __name__ == "__main__":
    _exit_with_parent()
    server = Server(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    print(f"READY {PORT}", flush=True)
    server.serve_forever()
