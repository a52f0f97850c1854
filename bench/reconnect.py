"""Reconnect storm: every client of an instance comes back at once, as after its restart.

One ``chatd serve`` pinned to the broker core, relaying through RabbitMQ (a fresh vhost) and,
with ``--redis``, on the Redis tier. K users in K/2 sessions each open a WebSocket to ``/ws``
at the same moment and do what a returning chat client does: CONNECT with its RS256 token,
SUBSCRIBE to its session topic with ``x-since-seq`` (the replay query) and to its user queues
(ack, error, receipts), the last with a receipt. Timed per client: connection attempt to
RECEIPT.

Two rounds: ``fresh``, on an instance that holds no binding yet (a restart: every topic and
user queue needs a RabbitMQ bind first), then, after every client closed, ``again`` while the
bindings still linger (``unbind_after_seconds``), which is the cost of the reconnect alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from bench.broker import Meter
from bench.chatd_serve import Deployment, chatd_deployment, fresh_vhost, tokens_for
from bench.send import init_sessions
from bench.targets import raise_fd_limit
from bench.wire import Conn, Endpoint, frame, stomp_connect, subscribe

Result = dict[str, Any]
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # never short of ephemeral ports
USER_QUEUES = [("a", "/user/queue/ack"), ("e", "/user/queue/error"), ("r", "/user/queue/receipts")]
CLIENT_TIMEOUT = 60.0


async def _storm(deployment: Deployment, tokens: list[str], sessions: list[str]) -> Result:
    server = deployment.instances[0]
    conns: list[Conn] = []
    took: list[float] = []
    failures: list[str] = []

    async def client(i: int) -> None:
        ep = Endpoint(server.host, server.port, "/ws", passcode=tokens[i])
        began = time.monotonic()
        try:
            with trio.fail_after(CLIENT_TIMEOUT):
                conn, splitter = await stomp_connect(ep, SOURCES[i % len(SOURCES)])
                conns.append(conn)
                topic = {
                    "id": "t",
                    "destination": f"/topic/session.{sessions[i // 2]}",
                    "ack": "auto",
                    "x-since-seq": "0",
                }
                await conn.send(frame("SUBSCRIBE", topic))
                await subscribe(conn, splitter, USER_QUEUES)
            took.append(time.monotonic() - began)
        except Exception as exc:  # counted and reported
            failures.append(repr(exc)[:200])

    meter = Meter(server.pid)
    meter.start()
    async with trio.open_nursery() as nursery:
        for i in range(len(tokens)):
            nursery.start_soon(client, i)
    measured = meter.stop()
    with trio.move_on_after(20):
        for conn in conns:
            await conn.aclose()
    took.sort()

    def at(q: float) -> float | None:
        return round(took[min(len(took) - 1, int(q * len(took)))], 2) if took else None

    server_cpu = measured["broker_cpu_pct"] / 100 * measured["seconds"]
    return {
        "clients": len(tokens),
        "subscribed": len(took),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "p50_s": at(0.5),
        "p99_s": at(0.99),
        "max_s": at(1.0),
        "server_cpu_us_per_client": round(server_cpu / len(tokens) * 1e6),
        **measured,
    }


async def _rounds(deployment: Deployment, clients: int, say: Any) -> Result:
    server = deployment.instances[0]
    emails = [f"reconnect{i}@example.com" for i in range(clients)]
    tokens = tokens_for(deployment.data_dir, emails)
    sessions = await init_sessions(server.host, server.port, tokens[0::2], emails[1::2])
    runs: Result = {}
    for name in ("fresh", "again"):
        say(f"  {clients} clients reconnecting at once ({name})")
        runs[name] = await _storm(deployment, tokens, sessions)
        await trio.sleep(2)  # the server has closed every session
    return runs


def reconnect_benchmark(workdir: Path, *, clients: int, say: Any = print) -> Result:
    """Both rounds on a fresh database and vhost."""
    limit = raise_fd_limit()
    clients = min(clients, (limit - 200) // 2 * 2)
    with fresh_vhost() as url, chatd_deployment(workdir, rabbitmq_url=url, say=say) as deployment:
        return trio.run(_rounds, deployment, clients, say)
