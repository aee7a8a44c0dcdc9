"""forgeflow's model server with its llamacpp runtime's times written down, for `llamacpp_engine_rate.py --parts
trace`: each request's (keyed by the `[NNNNN]` serial its message starts with) when the runtime began preparing
it, when it was queued and when its first text left the runtime; and each llama_decode's start, end, entries and
logits. One JSON object a line to the file FORGEFLOW_BENCH_TRACE names. Arguments are the model server's.

    FORGEFLOW_BENCH_TRACE=/tmp/trace.jsonl python bench/traced_model_server.py --model-dir DIR --runtime llamacpp ...
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def main() -> int:
    from forgeflow.inference import model_server
    from forgeflow.inference.runtimes.base import TokenStream
    from forgeflow.inference.runtimes.llamacpp import LlamaCppRuntime
    from forgeflow.inference.runtimes.llamacpp_engine import LlamaEngine

    out, lock = open(os.environ["FORGEFLOW_BENCH_TRACE"], "a"), threading.Lock()

    def emit(record: dict) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")
            out.flush()

    stream, iterate, decode = LlamaCppRuntime.stream, TokenStream.__iter__, LlamaEngine.decode

    def traced_stream(self, request, adapter=None):
        began = time.time()
        tokens = stream(self, request, adapter)
        last = request.messages[-1] if request.messages else {}
        text = last.get("content") if isinstance(last, dict) else None
        if isinstance(text, str) and text.startswith("[") and "]" in text:
            tokens.bench_trace = {"key": text[1:text.index("]")], "prepare": began, "queued": time.time()}
        return tokens

    def traced_iter(self):
        trace = getattr(self, "bench_trace", None)
        for event in iterate(self):
            if trace is not None and event.text:
                emit(trace | {"first": time.time()})
                trace = None
            yield event

    def traced_decode(self, entries):
        began = time.time()
        status = decode(self, entries)
        emit({"step": began, "end": time.time(), "n": len(entries), "logits": sum(1 for e in entries if e[3])})
        return status

    LlamaCppRuntime.stream, TokenStream.__iter__, LlamaEngine.decode = traced_stream, traced_iter, traced_decode
    return model_server.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
