"""Broker scenarios (issue 2), each against one target and transport, all bounded in time:
fan-out throughput, paced multi-topic fan-out with latency / loss / order checks (and an
overload ramp on top of it), and ping-pong round trips.

Bodies carry ``TOPIC SEQ SEND_NS`` (the generator's CLOCK_MONOTONIC at send time): receivers
check per-topic sequence numbers and compute latency with the same clock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from bench.targets import Target, cpu_seconds, self_cpu, system_busy
from bench.wire import (
    BlockingConn,
    Conn,
    Endpoint,
    FrameSplitter,
    WireError,
    connect_frame,
    frame,
    send_frame,
    send_prefix,
)
from bench.wire import stomp_connect as connect
from bench.wire import subscribe as subscribe_all

Result = dict[str, Any]
CONNECT_CONCURRENCY = 64


class Meter:
    """Wall time, generator CPU and broker CPU over a measured window, and the CPU everything
    else on the machine used meanwhile (other processes competing for the cores)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = self.g0 = self.b0 = self.s0 = 0.0

    def start(self) -> None:
        self.t0, self.g0, self.b0 = time.monotonic(), self_cpu(), cpu_seconds(self.pid)
        self.s0 = system_busy()

    def stop(self) -> Result:
        wall = time.monotonic() - self.t0
        gen, broker = self_cpu() - self.g0, cpu_seconds(self.pid) - self.b0
        other = max(0.0, system_busy() - self.s0 - gen - broker)
        return {
            "seconds": round(wall, 2),
            "gen_cpu_pct": round(100 * gen / wall, 1),
            "broker_cpu_pct": round(100 * broker / wall, 1),
            "other_cpu_pct": round(100 * other / wall, 1),
        }


def percentiles(values_ns: list[int]) -> Result:
    """p50 / p99 / max in milliseconds."""
    if not values_ns:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    values_ns.sort()
    n = len(values_ns)

    def pick(q: float) -> float:
        return round(values_ns[min(n - 1, int(q * n))] / 1e6, 3)

    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": round(values_ns[-1] / 1e6, 3)}


async def open_many(
    ep: Endpoint,
    count: int,
    setup: Callable[[int, Conn, FrameSplitter], Awaitable[None]],
) -> list[tuple[Conn, FrameSplitter]]:
    """`count` CONNECTed connections, each passed through `setup(index, conn, splitter)`."""
    opened: list[tuple[Conn, FrameSplitter] | None] = [None] * count
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)

    async def one(i: int) -> None:
        async with limiter:
            conn, splitter = await connect(ep)
            opened[i] = (conn, splitter)
            await setup(i, conn, splitter)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
    except BaseException:
        await close_all([c for c in opened if c is not None])
        raise
    return [c for c in opened if c is not None]


async def close_all(conns: list[tuple[Conn, FrameSplitter]]) -> None:
    with trio.move_on_after(5):
        for conn, _ in conns:
            await conn.aclose()


def _prefix(label: str) -> str:
    return f"/topic/bench-{uuid.uuid4().hex[:8]}-{label}"


# -- a. fan-out ------------------------------------------------------------------------------


@dataclass
class _Flow:
    delivered: int = 0
    errors: int = 0
    closed: int = 0
    wake_at: int = 0
    wake: trio.Event = field(default_factory=trio.Event)


async def fanout(
    target: Target,
    transport: str,
    *,
    subscribers: int = 100,
    warmup: float = 1.0,
    window: float = 5.0,
    batch: int = 50,
    in_flight: int = 1000,
) -> Result:
    """1 topic x `subscribers`: one publisher pipelines SENDs (at most `in_flight` messages
    ahead of the subscribers); deliveries counted over `window` seconds after `warmup`."""
    ep = target.endpoint(transport)
    dest = _prefix("fan")
    flow = _Flow()
    subs = await open_many(ep, subscribers, lambda i, c, s: subscribe_all(c, s, [("0", dest)]))
    pub, _ = await connect(ep)
    payload = b"".join(send_frame(send_prefix(dest), b"fan-out %06d" % i) for i in range(batch))

    async def count(conn: Conn) -> None:
        while data := await conn.recv():
            flow.delivered += data.count(b"\x00")
            if b"ERROR" in data:
                flow.errors += 1
            if flow.delivered >= flow.wake_at:
                flow.wake.set()
        flow.closed += 1
        flow.wake.set()

    async def publish() -> None:
        sent = 0
        while True:
            limit = (sent + batch - in_flight) * subscribers
            if flow.delivered < limit and flow.closed == 0:
                flow.wake = trio.Event()
                flow.wake_at = limit
                await flow.wake.wait()
            await pub.send(payload)
            sent += batch

    meter = Meter(target.pid)
    try:
        async with trio.open_nursery() as nursery:
            for conn, _ in subs:
                nursery.start_soon(count, conn)
            nursery.start_soon(publish)
            await trio.sleep(warmup)
            meter.start()
            before = flow.delivered
            await trio.sleep(window)
            delivered = flow.delivered - before
            measured = meter.stop()
            nursery.cancel_scope.cancel()
    finally:
        await close_all([*subs, (pub, FrameSplitter())])
    rate = delivered / measured["seconds"]
    return {
        "delivered_per_s": round(rate),
        "errors": flow.errors,
        "closed": flow.closed,
        **measured,
    }


# -- b, c. paced fan-out with checks ---------------------------------------------------------


@dataclass
class _Check:
    delivered: int = 0
    gaps: int = 0
    reordered: int = 0
    errors: int = 0
    closed: int = 0
    latencies: list[int] = field(default_factory=list)


async def paced(
    target: Target,
    transport: str,
    *,
    topics: int,
    per_topic: int,
    per_conn: int,
    publishers: int,
    rate: float,
    duration: float,
    drain: float = 3.0,
) -> Result:
    """`topics` x `per_topic` subscriptions (`per_conn` per connection, the subscribers of a
    topic on distinct connections); `publishers` connections offer `rate` msg/s in total,
    round-robin over their topics, for `duration` seconds. Deliveries are checked for gaps
    and reordering per topic and subscriber; late ones get `drain` seconds."""
    ep = target.endpoint(transport)
    base = _prefix("t")
    conns_needed = topics * per_topic // per_conn

    def topics_of(i: int) -> list[int]:
        return [(i * per_conn + j) % topics for j in range(per_conn)]

    subs = await open_many(
        ep,
        conns_needed,
        lambda i, c, s: subscribe_all(c, s, [(str(t), f"{base}{t}") for t in topics_of(i)]),
    )
    pubs = [(await connect(ep))[0] for _ in range(publishers)]
    check = _Check()
    sent_per_topic = [0] * topics
    latencies = check.latencies

    async def receive(conn: Conn, splitter: FrameSplitter) -> None:
        last: dict[bytes, int] = {}
        while data := await conn.recv():
            now = time.monotonic_ns()
            if b"ERROR" in data:
                check.errors += 1
            for f in splitter.feed(data):
                body = f[f.rfind(b"\n") + 1 :]
                if not body:
                    continue
                topic, seq_b, ts = body.split(b" ")
                seq = int(seq_b)
                prev = last.get(topic, 0)
                if seq == prev + 1:
                    last[topic] = seq
                elif seq > prev:
                    check.gaps += seq - prev - 1
                    last[topic] = seq
                else:
                    check.reordered += 1
                latencies.append(now - int(ts))
                check.delivered += 1
        check.closed += 1

    async def publish(conn: Conn, mine: list[int], share: float) -> None:
        prefixes = {t: send_prefix(f"{base}{t}") for t in mine}
        start, sent, k = time.monotonic(), 0, len(mine)
        while (elapsed := time.monotonic() - start) < duration:
            due = min(int(share * elapsed) - sent, 2000)
            if due > 0:
                ts = time.monotonic_ns()
                parts = []
                for n in range(sent, sent + due):
                    t = mine[n % k]
                    seq = sent_per_topic[t] = sent_per_topic[t] + 1
                    parts.append(send_frame(prefixes[t], b"%d %d %d" % (t, seq, ts)))
                sent += due
                await conn.send(b"".join(parts))
            await trio.sleep(0.002)

    meter = Meter(target.pid)
    try:
        async with trio.open_nursery() as nursery:
            for conn, splitter in subs:
                nursery.start_soon(receive, conn, splitter)
            meter.start()
            async with trio.open_nursery() as senders:
                for p, conn in enumerate(pubs):
                    mine = list(range(p, topics, publishers))
                    senders.start_soon(publish, conn, mine, rate * len(mine) / topics)
            send_seconds = time.monotonic() - meter.t0
            expected = sum(sent_per_topic) * per_topic
            with trio.move_on_after(drain):
                while check.delivered + check.gaps < expected and check.closed == 0:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            measured = meter.stop()
            nursery.cancel_scope.cancel()
    finally:
        await close_all([*subs, *[(c, FrameSplitter()) for c in pubs]])
    sent = sum(sent_per_topic)
    missing = expected - check.delivered
    return {
        "offered_per_s": round(rate),
        "sent_per_s": round(sent / send_seconds),
        "delivered_per_s": round(check.delivered / measured["seconds"]),
        "delivered": check.delivered,
        "expected": expected,
        "missing": missing,
        "gaps": check.gaps,
        "reordered": check.reordered,
        "errors": check.errors,
        "closed": check.closed,
        **percentiles(latencies),
        **measured,
    }


def clean(result: Result, rate: float, max_p99_ms: float = 500.0) -> bool:
    """A paced run kept up: everything delivered in order, on time, at the offered rate."""
    return (
        result["missing"] == 0
        and result["gaps"] == 0
        and result["reordered"] == 0
        and result["errors"] == 0
        and result["closed"] == 0
        and result["sent_per_s"] >= 0.95 * rate
        and result["p99_ms"] is not None
        and result["p99_ms"] <= max_p99_ms
    )


async def ramp(
    target: Target,
    transport: str,
    *,
    step: float,
    start: float = 1000.0,
    factor: float = 1.4,
    ceiling: float = 40_000.0,
    say: Callable[[str], None] = print,
    **layout: int,
) -> Result:
    """Raise the offered rate by `factor` until a step is not clean; the best clean step."""
    best: Result | None = None
    failed: Result | None = None
    rate, retried = start, False
    while rate <= ceiling:
        result = await paced(target, transport, rate=rate, duration=step, drain=2.0, **layout)
        ok = clean(result, rate)
        verdict = "ok" if ok else "limit" if retried else "not clean, once more"
        say(
            f"    ramp {rate:>8.0f} msg/s offered: delivered {result['delivered_per_s']:>7}/s "
            f"p99 {result['p99_ms']} ms missing {result['missing']} gen {result['gen_cpu_pct']}%"
            f" broker {result['broker_cpu_pct']}% other {result['other_cpu_pct']}% -> {verdict}"
        )
        if not ok and not retried:  # one retry: neighbours on the machine cause blips
            retried = True
            continue
        if not ok:
            failed = result
            break
        best, retried = result, False
        rate *= factor
    per_topic = layout["per_topic"]
    return {
        "max_clean_msg_per_s": best["offered_per_s"] if best else 0,
        "max_clean_deliveries_per_s": best["delivered_per_s"] if best else 0,
        "max_clean_p99_ms": best["p99_ms"] if best else None,
        "subscribers_per_topic": per_topic,
        "gen_cpu_pct": best["gen_cpu_pct"] if best else None,
        "broker_cpu_pct": best["broker_cpu_pct"] if best else None,
        "other_cpu_pct": best["other_cpu_pct"] if best else None,
        "first_failing": failed,
    }


# -- d. ping-pong ----------------------------------------------------------------------------


async def ping_pong(
    target: Target, transport: str, *, warmup: float = 0.5, window: float = 5.0
) -> Result:
    """One client SENDs to a topic it subscribes to and waits for the MESSAGE, repeatedly.

    Strictly sequential, so it runs on a blocking socket: an event loop would only add its
    own overhead to every round trip."""
    ep = target.endpoint(transport)
    meter = Meter(target.pid)
    conn = BlockingConn(ep)
    try:
        rtts = _ping_pong(conn, _prefix("pp"), meter, warmup, window)
    finally:
        conn.close()
    measured = meter.stop()
    return {
        "round_trips_per_s": round(len(rtts) / measured["seconds"]),
        **percentiles(rtts),
        **measured,
    }


def _ping_pong(
    conn: BlockingConn, dest: str, meter: Meter, warmup: float, window: float
) -> list[int]:
    splitter = FrameSplitter()

    def until(command: bytes) -> None:
        while True:
            for f in splitter.feed(conn.recv()):
                f = f.lstrip(b"\r\n")
                if f.startswith(command):
                    return
                if f.startswith(b"ERROR"):
                    raise WireError(f"the broker refused: {f[:200]!r}")

    conn.send(connect_frame(conn.endpoint))
    until(b"CONNECTED")
    conn.send(frame("SUBSCRIBE", {"id": "0", "destination": dest, "receipt": "r"}))
    until(b"RECEIPT")
    ping = send_frame(send_prefix(dest), b"ping")
    rtts: list[int] = []
    clock = time.monotonic_ns
    measuring, stop_at = False, clock() + int(warmup * 1e9)
    while True:
        t0 = clock()
        if t0 >= stop_at:
            if measuring:
                break
            measuring, stop_at = True, t0 + int(window * 1e9)
            meter.start()
        conn.send(ping)
        until(b"MESSAGE")
        if measuring:
            rtts.append(clock() - t0)
    conn.send(frame("DISCONNECT"))
    return rtts
