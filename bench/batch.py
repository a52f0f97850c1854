"""Batch send benchmark (issue 17): messages per second stored and delivered when clients
send batches of 1, 10 and 100 messages through ``POST /api/chat/messages``.

One ``chatd serve`` on a fresh PostgreSQL database (direct delivery), pinned to core 0 like
the other scenarios; this process (the generator) on core 1. `clients` senders, each in its
own session, send back to back (a closed loop: the next request leaves when the answer came);
the peer of each session holds one WebSocket to ``/ws`` subscribed to the session topic and
counts the MESSAGE frames. Over the same window after a warm-up: messages stored per second
(items answered 201), messages delivered per second (topic frames at the peers), requests per
second, request p50/p99, and the server's CPU per stored message. The send queue bounds are
raised for the run (``max_queued_sends``, ``max_send_wait_ms``) so that a closed loop of
batches of 100 measures throughput rather than the overload guard.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench.broker import percentiles
from bench.chatd_serve import Deployment, chatd_deployment, tokens_for
from bench.send import HttpClient, init_sessions
from bench.targets import cpu_seconds, self_cpu
from bench.wire import Conn, Endpoint, FrameSplitter, next_frames, stomp_connect, subscribe

Result = dict[str, Any]
SIZES = (1, 10, 100)
ENV = {"CHATD_LIMITS__MAX_QUEUED_SENDS": "2000", "CHATD_LIMITS__MAX_SEND_WAIT_MS": "5000"}


class Counts:
    """What the window saw: stored items, statuses, request latencies, delivered frames."""

    def __init__(self) -> None:
        self.measuring = False
        self.stored = 0
        self.delivered = 0
        self.requests = 0
        self.statuses: Counter[int] = Counter()
        self.latencies: list[int] = []


async def _receive(conn: Conn, splitter: FrameSplitter, counts: list[Counts]) -> None:
    while True:
        frames = await next_frames(conn, splitter)
        now = counts[-1]
        if now.measuring:
            now.delivered += sum(1 for f in frames if f.lstrip(b"\r\n").startswith(b"MESSAGE"))


async def _sender(http: HttpClient, session: str, size: int, counts: list[Counts]) -> None:
    run = uuid.uuid4().hex[:8]
    k = 0
    while True:
        items = []
        for _ in range(size):
            k += 1
            items.append({"content": f"batch bench {k}", "clientMessageId": f"{run}-{k}"})
        body = json.dumps({"sessionId": session, "messages": items}).encode()
        t0 = time.monotonic_ns()
        status, answer = await http.post("/api/chat/messages", body)
        now = counts[-1]
        if not now.measuring:
            continue
        now.latencies.append(time.monotonic_ns() - t0)
        now.requests += 1
        now.statuses[status] += 1
        if status in (200, 201):
            now.stored += sum(1 for r in json.loads(answer)["results"] if r["status"] == 201)


async def _run(
    deployment: Deployment, clients: int, seconds: float, warmup: float, say: Any
) -> list[Result]:
    server = deployment.instances[0]
    emails = [f"batch{i}-{side}@example.com" for i in range(clients) for side in "ab"]
    tokens = tokens_for(deployment.data_dir, emails)
    senders, peers = tokens[0::2], emails[1::2]
    sessions = await init_sessions(server.host, server.port, senders, peers)
    counts = [Counts()]
    results: list[Result] = []
    async with trio.open_nursery() as nursery:
        for i, token in enumerate(tokens[1::2]):
            conn, splitter = await stomp_connect(
                Endpoint(server.host, server.port, "/ws", passcode=token)
            )
            await subscribe(conn, splitter, [("t", f"/topic/session.{sessions[i]}")])
            nursery.start_soon(_receive, conn, splitter, counts)
        https = [await HttpClient.open(server.host, server.port, t) for t in senders]
        for size in SIZES:
            window = Counts()
            counts.append(window)
            async with trio.open_nursery() as load:
                for http, session in zip(https, sessions, strict=True):
                    load.start_soon(_sender, http, session, size, counts)
                await trio.sleep(warmup)
                t0, g0, s0 = time.monotonic(), self_cpu(), cpu_seconds(server.pid)
                window.measuring = True
                await trio.sleep(seconds)
                window.measuring = False
                wall = time.monotonic() - t0
                server_cpu = cpu_seconds(server.pid) - s0
                load.cancel_scope.cancel()
            r: Result = {
                "batch": size,
                "clients": clients,
                "requests_per_s": round(window.requests / wall),
                "stored_per_s": round(window.stored / wall),
                "delivered_per_s": round(window.delivered / wall),
                **percentiles(window.latencies),
                "statuses": {str(k): v for k, v in window.statuses.items()},
                "server_cpu_pct": round(100 * server_cpu / wall, 1),
                "gen_cpu_pct": round(100 * (self_cpu() - g0) / wall, 1),
                "server_cpu_us_per_msg": (
                    round(1e6 * server_cpu / window.stored) if window.stored else None
                ),
            }
            say("  -> " + " ".join(f"{k}={v}" for k, v in r.items()))
            results.append(r)
            # The connections were cancelled mid-request: open fresh ones for the next size.
            for http in https:
                await http.aclose()
            https = [await HttpClient.open(server.host, server.port, t) for t in senders]
            await trio.sleep(1.0)  # let delivery of the last requests settle
        for http in https:
            await http.aclose()
        nursery.cancel_scope.cancel()
    return results


def batch_benchmark(
    workdir: Path, *, clients: int, seconds: float, warmup: float, say: Any = print
) -> Result:
    """The batch scenario on a database created for it and dropped afterwards."""
    with chatd_deployment(workdir, env=ENV, say=say) as deployment:
        say(
            f"  {clients} senders, batches of {', '.join(map(str, SIZES))}, "
            f"{seconds:g} s each after {warmup:g} s warm-up"
        )
        runs = trio.run(_run, deployment, clients, seconds, warmup, say)
    return {"runs": runs}
