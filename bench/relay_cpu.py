"""The gateway's relay of a streamed answer: CPU per event of this tree's `serving/relay.py` against another
revision's, in turn, in one process.

    .venv/bin/python bench/relay_cpu.py [--baseline 11f83e6] [--events 3000] [--rounds 6]

An instance stand-in (asyncio, in this process) streams `--events` chat chunks, each its own HTTP chunk a fraction
of a millisecond apart, as a model server writes tokens; each relay reads them through aiohttp as the gateway does
and passes every event on. The CPU this process spends per event (the stand-in, aiohttp and the relay together)
is measured with `time.thread_time`, the two relays taking turns going first; medians of the rounds. The baseline's
relay is read with `git show REV:src/forgeflow/serving/relay.py` and imported beside this tree's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp

ROOT = Path(__file__).resolve().parents[1]


def relay_of(revision: str):
    """The relay module as it stands at `revision`, imported under a name of its own."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:src/forgeflow/serving/relay.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="ff-relay-")) / "relay_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("relay_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(i: int) -> bytes:
    return f'data: {json.dumps({"choices": [{"delta": {"content": f"tok{i} "}}]})}\n\n'.encode()


class Release:
    tokens, usage, status, failed = 0, None, 499, False

    async def __call__(self) -> None:
        pass


async def measure(relays: dict, events: int, rounds: int) -> dict[str, float]:
    from forgeflow.errors import RequestTimeout
    from forgeflow.serving.metrics import Metrics
    from forgeflow.serving.schemas import Dialect

    async def instance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
                     b"connection: close\r\n\r\n")
        for i in range(events):
            data = event(i)
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.0002)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(instance, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    spent: dict[str, list[float]] = {name: [] for name in relays}
    async with aiohttp.ClientSession() as session:
        for r in range(rounds):
            for name in list(relays) if r % 2 == 0 else list(reversed(relays)):
                call = SimpleNamespace(svc=SimpleNamespace(metrics=Metrics()), endpoint="e", deployment="d",
                                       started=time.perf_counter(), dialect=Dialect.OPENAI)
                resp = await session.post(url, data=b"{}")
                done, cpu = Release(), time.thread_time()
                async for _piece in relays[name].relay(call, resp, done, RequestTimeout("too slow")):
                    pass
                spent[name].append(1e6 * (time.thread_time() - cpu) / events)
                if done.tokens != events:
                    raise SystemExit(f"{name}: {done.tokens} of {events} events counted")
    server.close()
    return {name: statistics.median(values) for name, values in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="11f83e6", help="the revision whose relay is the baseline")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    from forgeflow.serving import relay

    cpu = asyncio.run(measure({"baseline": relay_of(args.baseline), "this tree": relay}, args.events, args.rounds))
    print(f"relay CPU per event (this process: the stand-in instance, aiohttp and the relay), medians of "
          f"{args.rounds} rounds: baseline {args.baseline} {cpu['baseline']:.1f} µs, this tree "
          f"{cpu['this tree']:.1f} µs ({cpu['this tree'] / cpu['baseline']:.3f}x)")


if __name__ == "__main__":
    sys.exit(main())
