"""Scenario e: many idle WebSocket connections (CONNECTed, one subscription each), and the
broker's resident memory per connection: (RSS after - RSS before) / N.

A few warm-up connections are opened first so that one-time allocations (imports, first
buffers) do not count. Client sockets are bound to rotating source addresses 127.0.0.2-9
so the generator never runs short of ephemeral ports.
"""

from __future__ import annotations

import time
import uuid

import trio

from bench.broker import Meter, Result
from bench.targets import Target, raise_fd_limit, rss_bytes
from bench.wire import Conn, Endpoint, stomp_connect, subscribe

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
WARM_UP = 20
CONCURRENCY = 128


async def _open(
    ep: Endpoint, count: int, offset: int, dest: str, out: list[Conn], failures: list[str]
) -> None:
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(i: int) -> None:
        async with limiter:
            try:
                conn, splitter = await stomp_connect(ep, SOURCES[i % len(SOURCES)])
            except Exception as exc:  # counted and reported, not fatal
                failures.append(repr(exc)[:200])
                return
            out.append(conn)
            try:
                await subscribe(conn, splitter, [("0", f"{dest}{i % 100}")])
            except Exception as exc:
                failures.append(repr(exc)[:200])

    async with trio.open_nursery() as nursery:
        for i in range(offset, offset + count):
            nursery.start_soon(one, i)


async def idle_connections(
    target: Target, count: int, *, settle: float = 2.0, deadline: float = 180.0
) -> Result:
    """Open `count` idle WebSocket STOMP sessions on `target`; its RSS growth per session."""
    limit = raise_fd_limit()
    if limit < count + WARM_UP + 100:
        count = limit - WARM_UP - 100
    ep = target.ws
    dest = f"/topic/bench-{uuid.uuid4().hex[:8]}-idle"
    conns: list[Conn] = []
    failures: list[str] = []
    meter = Meter(target.pid)
    try:
        with trio.move_on_after(deadline) as scope:
            await _open(ep, WARM_UP, 0, dest, conns, failures)
            await trio.sleep(settle)
            before = rss_bytes(target.pid)
            meter.start()
            started = time.monotonic()
            await _open(ep, count, WARM_UP, dest, conns, failures)
            opening = time.monotonic() - started
            measured = meter.stop()
            await trio.sleep(settle)
            after = rss_bytes(target.pid)
            alive = sum(1 for c in conns if not c.closed)
        if scope.cancelled_caught:
            return {
                "connections": len(conns),
                "error": f"timed out after {deadline} s",
                "failures": len(failures),
            }
    finally:
        with trio.move_on_after(20):
            for conn in conns:
                await conn.aclose()
    opened = max(1, alive - WARM_UP)
    return {
        "connections": alive - WARM_UP,
        "requested": count,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "kb_per_connection": round((after - before) / opened / 1024, 1),
        "connects_per_s": round(count / opening),
        **measured,
    }
