"""What tracing costs per send: CPU microseconds and sends per second of the in-process send
path (tracing change, issue 17).

``python -m bench.trace_overhead --variant off|on [--sends N] [--json]``, or as a file with
another tree of chatd first on ``PYTHONPATH`` (``--variant base``: the code before tracing,
which has no tracer to pass) to compare against the code without tracing at all.
``--parts`` instead times the pieces of the path that tracing touches, each the best of many
repeats (steady even on a busy machine, where whole-path figures move by ±20 %): one send's
`ChatService._prepare`, its three rows through `LocalDelivery.publish`, and a batch of 8
through `Store.append_messages` (SQLite). ``--opcodes`` counts the Python bytecode
instructions the whole path executes per send, every thread (a deterministic measure of the
Python work, blind to time spent in C such as SQLite's), for the off-versus-base comparison
that machine load makes unreadable in CPU time.

The path: `ChatService.send` (what ``POST /api/chat/message`` and ``/app/chat.send`` call) →
`SendCommitter` (group commit, SQLite in a temporary folder) → direct delivery into the
`LocalDelivery` of a real broker runtime, all built by `supervisor.build_components` as the
server builds them. `CONCURRENCY` senders keep the committer's batches realistic. With
``--variant on`` each send runs inside a server span made current, as the REST hook does, and
spans go through the real batch processor and OTLP/HTTP exporter to a receiver in another
process (so exporting is counted, receiving is not). CPU is this process's (every thread:
the SQLite worker's and the export thread's too) per send: on a shared machine it is steadier
than the rate, which other processes' load moves.
"""

from __future__ import annotations

import argparse
import http.server
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

CONCURRENCY = 8
WARMUP = 400


def _receiver(port: Any) -> None:
    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    port.value = server.server_address[1]
    server.serve_forever()


class _OpcodeCounter:
    """Counts executed bytecode instructions through `sys.settrace` (and `threading`'s, for
    the worker threads), while `on`."""

    def __init__(self) -> None:
        self.count = 0
        self.on = False

    def trace(self, frame: Any, event: str, arg: Any) -> Any:
        if not self.on:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        if event == "opcode":
            self.count += 1
        return self.trace


async def _run(
    variant: str,
    sends: int,
    endpoint: str | None,
    counter: _OpcodeCounter | None = None,
    sample_ratio: float | None = None,
) -> dict[str, Any]:
    from chatd.config import (
        AuthConfig,
        Config,
        DatabaseConfig,
        LimitsConfig,
        ServerConfig,
    )
    from chatd.startup.database import migrate_store, open_store
    from chatd.supervisor import build_components

    folder = Path(tempfile.mkdtemp(prefix="chatd-trace-bench-"))
    from chatd.auth.keys import ensure_dev_keys

    _, public, _ = ensure_dev_keys(folder)
    config = Config(
        server=ServerConfig(data_dir=folder),
        database=DatabaseConfig(url=f"sqlite:///{folder / 'chat.sqlite3'}"),
        auth=AuthConfig(public_key_file=public),
        limits=LimitsConfig(
            send_burst=1_000_000,
            sends_per_second=1_000_000,
            identical_content=1_000_000,
            max_send_wait_ms=60_000,
        ),
    )
    tracer = None
    if variant == "on":
        from chatd.config import TracingConfig
        from chatd.observability.tracing import start_tracing

        tracer = start_tracing(
            TracingConfig(enabled=True, endpoint=endpoint, sample_ratio=sample_ratio)
        )
    store = await open_store(config)
    await migrate_store(store, config.database)
    if tracer is not None:
        components = await build_components(config, store, tracer=tracer)
    else:
        components = await build_components(config, store)
    services = components.services
    senders = [f"user{i}@example.com" for i in range(CONCURRENCY)]
    async with trio.open_nursery() as nursery:
        await nursery.start(components.committer.run)
        sessions = [
            (await services.init_session(s, "peer@example.com", "bench")).id for s in senders
        ]

        async def one(sender: str, sid: object, n: int) -> None:
            if tracer is None:
                await services.send(sender, str(sid), f"message {n}", f"{sender}-{n}")
                return
            span = tracer.start("POST /api/chat/message", None, kind="server")
            try:
                with tracer.activate(span):
                    await services.send(sender, str(sid), f"message {n}", f"{sender}-{n}")
            finally:
                span.end()

        async def burst(start: int, count: int) -> None:
            async def sender_loop(i: int) -> None:
                for n in range(start + i, start + count, CONCURRENCY):
                    await one(senders[i], sessions[i], n)

            async with trio.open_nursery() as inner:
                for i in range(CONCURRENCY):
                    inner.start_soon(sender_loop, i)

        await burst(0, WARMUP)
        cpu, wall = time.process_time(), time.perf_counter()
        if counter is not None:
            import threading

            counter.on = True
            sys.settrace(counter.trace)
            threading.settrace(counter.trace)
        await burst(WARMUP, sends)
        if counter is not None:
            sys.settrace(None)
            counter.on = False
        if tracer is not None:  # the export of these sends' spans is part of their cost
            await trio.to_thread.run_sync(tracer.shutdown)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        batches = components.committer.batches
        nursery.cancel_scope.cancel()
    await store.aclose()
    result = {
        "variant": variant if sample_ratio is None else f"{variant}@{sample_ratio:g}",
        "sends": sends,
        "cpu_us_per_send": cpu / sends * 1e6,
        "sends_per_second": sends / wall,
        "batches": batches,
    }
    if counter is not None:
        result["opcodes_per_send"] = counter.count / sends
    return result


async def _parts() -> dict[str, float]:
    """Best-of-repeats microseconds of each piece (see the module docstring)."""
    import uuid

    from chatd.config import Config, DatabaseConfig, LimitsConfig, ServerConfig
    from chatd.domain.models import OutboxRow
    from chatd.profiles import LocalProfileProvider
    from chatd.realtime.delivery import LocalDelivery
    from chatd.services import ChatService
    from chatd.storage import open_store
    from chatd.storage.base import NewMessage
    from stomp.broker import Broker
    from stomp.trio import BrokerRuntime

    folder = Path(tempfile.mkdtemp(prefix="chatd-trace-parts-"))
    config = Config(
        server=ServerConfig(data_dir=folder),
        database=DatabaseConfig(url=f"sqlite:///{folder / 'chat.sqlite3'}"),
        limits=LimitsConfig(
            send_burst=1_000_000, sends_per_second=1_000_000, identical_content=1_000_000
        ),
    )
    best: dict[str, float] = {}

    def keep(name: str, seconds: float, n: int) -> None:
        best[name] = min(best.get(name, float("inf")), seconds / n * 1e6)

    delivery = LocalDelivery(BrokerRuntime(Broker()))
    sid = uuid.uuid4()
    now = __import__("datetime").datetime.now(__import__("datetime").UTC)
    topic = f"/topic/session.{sid}"
    rows = [
        OutboxRow(i, sid, sid, 1, "message", d, '{"seq":1}', 0, now, None, now)
        for i, d in enumerate([topic, "user:a@x.io:/queue/messages", "user:b@x.io:/queue/messages"])
    ]
    for _ in range(30):
        start = time.perf_counter()
        for _ in range(2000):
            await delivery.publish(rows)
            delivery.forget(topic)  # else the seq mark skips the topic row from now on
        keep("deliver_3_rows", time.perf_counter() - start, 2000)

    async with open_store(config.database.url) as store:
        await store.migrate()
        services = ChatService(store, LocalProfileProvider(), limits=config.limits)
        session = await services.init_session("a@x.io", "b@x.io", "bench")
        n = 0
        for _ in range(30):
            start = time.perf_counter()
            for _ in range(1000):
                n += 1
                await services._prepare("a@x.io", str(session.id), "hello", f"c{n}", "rest")
            keep("prepare", time.perf_counter() - start, 1000)
        sender = session.participant("a@x.io")
        assert sender is not None
        for _ in range(40):
            batch = []
            for _ in range(8):
                n += 1
                batch.append(NewMessage(session.id, sender, "hello", f"c{n}", now))
            start = time.perf_counter()
            await store.append_messages(batch)
            keep("append_8", time.perf_counter() - start, 1)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace_overhead")
    parser.add_argument("--variant", choices=("base", "off", "on"), default="off")
    parser.add_argument("--parts", action="store_true")
    parser.add_argument("--opcodes", action="store_true")
    parser.add_argument("--sample-ratio", type=float, help="with --variant on (default: all)")
    parser.add_argument("--sends", type=int, default=4000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.parts:
        parts = trio.run(_parts)
        print(
            json.dumps({"variant": args.variant, **parts})
            if args.json
            else ", ".join(f"{k} {v:.2f} us" for k, v in parts.items())
        )
        return 0
    endpoint = None
    receiver = None
    if args.variant == "on":
        port = multiprocessing.Value("i", 0)
        receiver = multiprocessing.Process(target=_receiver, args=(port,), daemon=True)
        receiver.start()
        while port.value == 0:
            time.sleep(0.01)
        endpoint = f"http://127.0.0.1:{port.value}/v1/traces"
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
    try:
        counter = _OpcodeCounter() if args.opcodes else None
        result = trio.run(_run, args.variant, args.sends, endpoint, counter, args.sample_ratio)
    finally:
        if receiver is not None:
            receiver.terminate()
    import chatd

    result["code"] = str(Path(chatd.__file__).parent.parent)
    opcodes = (
        f", {result['opcodes_per_send']:.0f} opcodes/send" if "opcodes_per_send" in result else ""
    )
    print(
        json.dumps(result)
        if args.json
        else f"{result['variant']}: {result['cpu_us_per_send']:.0f} CPU us/send, "
        f"{result['sends_per_second']:.0f} sends/s ({result['batches']} batches){opcodes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
