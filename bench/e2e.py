"""End-to-end benchmark (issues 4 and 11): a send → outbox → broker → both participants'
WebSockets, the send going through REST or through STOMP ``/app/chat.send``.

K pairs of users each hold one WebSocket to ``/ws`` (STOMP 1.2, token as passcode) subscribed
to their session topic and to ``/user/queue/messages``, like a real client. The first user of
each pair POSTs ``/api/chat/message`` on its own keep-alive connection; all pairs together
offer a fixed rate (sends scheduled at ``start + n / rate``). A message's content carries the
monotonic time its POST started, so every MESSAGE frame yields a latency from the POST to its
arrival on that WebSocket (same process, same clock).

With ``via="stomp"`` the first user of each pair SENDs ``/app/chat.send`` on its own
WebSocket instead (subscribed to ``/user/queue/ack`` and ``/user/queue/error`` too, so accepted
and refused sends are counted from the answers).

Reported per rate: POSTs/s achieved, how late the sends went out (the server's answer time
holds a sender back), deliveries/s, p50/p99/max POST→MESSAGE on the session topic (two per
message: one per participant) and on the user queues, messages not delivered to everyone 5 s
after the last send, and the outbox backlog (rows not yet processed) sampled every 200 ms.
Rates run in ascending order on one server; the backlog is drained before the next rate.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import trio

from bench.broker import percentiles
from bench.chatd_serve import Deployment, Instance, chatd_deployment, tokens_for
from bench.send import HttpClient, init_sessions
from bench.targets import cpu_seconds, self_cpu
from bench.wire import (
    Conn,
    Endpoint,
    FrameSplitter,
    next_frames,
    send_frame,
    send_prefix,
    stomp_connect,
    subscribe,
)

Result = dict[str, Any]
_CONTENT = re.compile(rb'"content":\s*"e2e (\d+) (\S+?)"')
_STATUS = re.compile(rb'"status":\s*"([A-Z_]+)"')
SETTLE = 5.0  # seconds after the last send before an undelivered message counts as missing
DRAIN = 30.0  # at most this long waiting for the outbox to empty between rates


class Ledger:
    """What was sent and when each copy arrived; one per rate."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}  # tag -> POST start (monotonic ns)
        self.topic: list[int] = []  # latencies, ns
        self.user: list[int] = []
        self.copies: dict[str, int] = {}  # tag -> MESSAGE frames received (4 when complete)
        self.lag: list[int] = []  # how late each POST started against its schedule, ns
        self.answer: list[int] = []  # POST round trips, ns
        self.statuses: dict[int, int] = {}
        self.frames = 0
        self.complete = 0  # messages seen 4 times (topic and user queue, both participants)
        self.sending = True
        self.settled = trio.Event()  # set once sending ended and every message is complete

    def answered(self, frame: bytes) -> None:
        """A STOMP send's answer: the ack (201-like) or the error (its status)."""
        status = 201
        if b"\ndestination:/user/queue/error" in frame:
            match = _STATUS.search(frame)  # the status name of the error body, e.g. 503's
            status = HTTPStatus[match.group(1).decode()].value if match else 0
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def arrived(self, frame: bytes, now: int) -> None:
        if b"\ndestination:/user/queue/ack" in frame or b"\ndestination:/user/queue/error" in frame:
            self.answered(frame)
            return
        match = _CONTENT.search(frame)
        if match is None:
            return
        tag = match.group(2).decode()
        self.frames += 1
        self.copies[tag] = copies = self.copies.get(tag, 0) + 1
        if copies == 4:
            self.complete += 1
            self.check_settled()
        latency = now - int(match.group(1))
        (self.topic if b"\ndestination:/topic/" in frame else self.user).append(latency)

    def check_settled(self) -> None:
        if not self.sending and self.complete >= len(self.sent):
            self.settled.set()


async def _receive(conn: Conn, splitter: FrameSplitter, ledgers: list[Ledger]) -> None:
    """Record every MESSAGE on this connection in the current ledger."""
    while True:
        frames = await next_frames(conn, splitter)
        now = time.monotonic_ns()
        for f in frames:
            if f.lstrip(b"\r\n").startswith(b"MESSAGE"):
                ledgers[-1].arrived(f, now)
            elif f.lstrip(b"\r\n").startswith(b"ERROR"):
                raise RuntimeError(f"the server sent ERROR: {f[:300]!r}")


Post = Callable[[bytes], Awaitable[None]]


async def _send(
    post: Post, session: str, schedule: list[float], ledger: Ledger, sender: int
) -> None:
    """Send a message at each scheduled time (or at once when running late) with `post`."""
    for k, at in enumerate(schedule):
        now = trio.current_time()
        if at > now:
            await trio.sleep(at - now)
        tag = f"{sender}-{k}-{uuid.uuid4().hex[:6]}"
        t0 = time.monotonic_ns()
        ledger.lag.append(max(0, int((trio.current_time() - at) * 1e9)))
        ledger.sent[tag] = t0
        await post(
            json.dumps(
                {"sessionId": session, "content": f"e2e {t0} {tag}", "clientMessageId": tag}
            ).encode()
        )
        ledger.answer.append(time.monotonic_ns() - t0)


def _rest_post(http: HttpClient, ledger: Ledger) -> Post:
    """POST /api/chat/message; the status is counted at once."""

    async def post(body: bytes) -> None:
        status, _ = await http.post("/api/chat/message", body)
        ledger.statuses[status] = ledger.statuses.get(status, 0) + 1

    return post


def _stomp_post(conn: Conn) -> Post:
    """SEND /app/chat.send; the answers (ack or error) are counted by `_receive`."""
    prefix = send_prefix("/app/chat.send")

    async def post(body: bytes) -> None:
        await conn.send(send_frame(prefix, body))

    return post


def _backlog(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM chat_message_outbox WHERE NOT processed AND NOT dead"
        ).fetchone()
    return int(row[0]) if row else 0


async def _sample_backlog(url: str, samples: list[int]) -> None:
    while True:
        samples.append(await trio.to_thread.run_sync(_backlog, url))
        await trio.sleep(0.2)


async def _drain(url: str) -> int:
    """Wait (bounded) until the outbox is empty; the rows still pending."""
    with trio.move_on_after(DRAIN):
        while left := await trio.to_thread.run_sync(_backlog, url):  # noqa: ASYNC110
            await trio.sleep(0.2)  # a count in the database: nothing to wait on
        return 0
    return left


def _summary(
    rate: float,
    seconds: float,
    ledger: Ledger,
    wall: float,
    backlog: list[int],
    cpu: dict[str, float],
) -> Result:
    posted = sum(ledger.statuses.values())
    topic, user = percentiles(list(ledger.topic)), percentiles(list(ledger.user))
    lag, answer = percentiles(list(ledger.lag)), percentiles(list(ledger.answer))
    return {
        "offered_per_s": rate,
        "seconds": seconds,
        "posted_per_s": round(posted / wall),
        "statuses": {str(k): v for k, v in ledger.statuses.items()},
        "post_p50_ms": answer["p50_ms"],
        "post_p99_ms": answer["p99_ms"],
        "send_lag_p99_ms": lag["p99_ms"],
        "send_lag_max_ms": lag["max_ms"],
        "delivered_per_s": round(ledger.frames / wall),
        "topic_p50_ms": topic["p50_ms"],
        "topic_p99_ms": topic["p99_ms"],
        "topic_max_ms": topic["max_ms"],
        "user_p50_ms": user["p50_ms"],
        "user_p99_ms": user["p99_ms"],
        "user_max_ms": user["max_ms"],
        "messages": len(ledger.sent),
        "missing": len(ledger.sent) - ledger.complete,
        "backlog_max": max(backlog, default=0),
        "backlog_p50": sorted(backlog)[len(backlog) // 2] if backlog else 0,
        # server CPU over the sending window per message sent (its 4 deliveries included)
        "server_cpu_us_per_msg": round(cpu.pop("server_cpu_s") * 1e6 / max(1, len(ledger.sent))),
        **cpu,
    }


async def _run(
    deployment: Deployment,
    pairs: int,
    rates: list[float],
    seconds: float,
    say: Callable[[str], None],
    via: str,
) -> tuple[Result, list[Result]]:
    first = deployment.instances[0]
    emails = [f"e2e{i}-{side}@example.com" for i in range(pairs) for side in "ab"]
    tokens = tokens_for(deployment.data_dir, emails)
    senders, peers = tokens[0::2], emails[1::2]
    sessions = await init_sessions(first.host, first.port, senders, peers)

    def instance(i: int) -> Instance:  # users spread over the instances
        return deployment.instances[i % len(deployment.instances)]

    ledgers = [Ledger()]
    results: list[Result] = []
    conns: list[Conn] = []
    async with trio.open_nursery() as nursery:
        for i, token in enumerate(tokens):
            where = instance(i)
            conn, splitter = await stomp_connect(
                Endpoint(where.host, where.port, "/ws", passcode=token)
            )
            subs = [("t", f"/topic/session.{sessions[i // 2]}"), ("u", "/user/queue/messages")]
            if via == "stomp" and i % 2 == 0:
                subs += [("a", "/user/queue/ack"), ("e", "/user/queue/error")]
            await subscribe(conn, splitter, subs)
            conns.append(conn)
            nursery.start_soon(_receive, conn, splitter, ledgers)
        https = [
            await HttpClient.open(instance(2 * i).host, instance(2 * i).port, t)
            for i, t in enumerate(senders)
        ]
        say(
            f"  {pairs} pairs on {len(deployment.instances)} instance(s): "
            f"{2 * pairs} WebSockets, {pairs} HTTP senders"
        )
        cost = await _cost_per_request(first, https[0], sessions[0])
        say(
            "  server CPU per request, one at a time: "
            + " ".join(f"{k}={v}" for k, v in cost.items())
        )
        await _drain(deployment.database_url)
        for rate in rates:
            ledger = Ledger()
            ledgers.append(ledger)
            r = await _one_rate(
                deployment,
                rate,
                seconds,
                ledger,
                https,
                sessions,
                conns[0::2] if via == "stomp" else None,
            )
            r["backlog_left"] = await _drain(deployment.database_url)
            say("  -> " + " ".join(f"{k}={v}" for k, v in r.items() if k != "statuses"))
            results.append(r)
        for http in https:
            await http.aclose()
        nursery.cancel_scope.cancel()
    return cost, results


async def _cost_per_request(
    server: Instance, http: HttpClient, session: str, count: int = 200
) -> Result:
    """Server CPU per request, one request at a time: ``GET /health/live`` (the HTTP stack's
    floor: Hypercorn, Quart, our middleware) beside ``POST /api/chat/message`` (everything a
    send costs, its outbox round included)."""

    async def live(_: int) -> None:
        status, _body = await http.request("GET", "/health/live")
        assert status == 200, status

    async def post(k: int) -> None:
        tag = f"cost-{k}-{uuid.uuid4().hex[:6]}"
        body = json.dumps(
            {"sessionId": session, "content": f"cost {tag}", "clientMessageId": tag}
        ).encode()
        status, _body = await http.request("POST", "/api/chat/message", body)
        assert status == 201, status

    out: Result = {}
    for name, call in (("live", live), ("post", post)):
        c0 = cpu_seconds(server.pid)
        for k in range(count):
            await call(k)
        out[f"{name}_cpu_ms"] = round(1000 * (cpu_seconds(server.pid) - c0) / count, 2)
    return out


async def _one_rate(
    deployment: Deployment,
    rate: float,
    seconds: float,
    ledger: Ledger,
    https: list[HttpClient],
    sessions: list[str],
    stomp_senders: list[Conn] | None = None,
) -> Result:
    """Offer `rate` msg/s for `seconds`, wait for stragglers, and sum up."""
    pairs = len(https)
    start = trio.current_time() + 0.2
    plans: list[list[float]] = [[] for _ in range(pairs)]
    for n in range(int(rate * seconds)):
        plans[n % pairs].append(start + n / rate)
    backlog: list[int] = []
    pids = [x.pid for x in deployment.instances]
    c0, g0, t0 = sum(map(cpu_seconds, pids)), self_cpu(), time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_backlog, deployment.database_url, backlog)
        async with trio.open_nursery() as posting:
            for i in range(pairs):
                post = (
                    _stomp_post(stomp_senders[i])
                    if stomp_senders is not None
                    else _rest_post(https[i], ledger)
                )
                posting.start_soon(_send, post, sessions[i], plans[i], ledger, i)
        wall = time.monotonic() - t0
        used = sum(map(cpu_seconds, pids)) - c0
        cpu = {
            "server_cpu_s": used,
            "server_cpu_pct": round(100 * used / wall, 1),
            "gen_cpu_pct": round(100 * (self_cpu() - g0) / wall, 1),
        }
        ledger.sending = False
        ledger.check_settled()
        with trio.move_on_after(SETTLE):
            await ledger.settled.wait()
        nursery.cancel_scope.cancel()
    return _summary(rate, seconds, ledger, wall, backlog, cpu)


def e2e_benchmark(
    workdir: Path,
    *,
    pairs: int,
    rates: list[float],
    seconds: float,
    instances: int = 1,
    rabbitmq_url: str | None = None,
    via: str = "rest",
    workers: int = 1,
    say: Callable[[str], None] = print,
) -> Result:
    """The end-to-end runs at each rate, on a fresh database (and server) of their own."""
    with chatd_deployment(
        workdir, instances=instances, rabbitmq_url=rabbitmq_url, workers=workers, say=say
    ) as deployment:
        say(f"  rates {', '.join(f'{r:g}' for r in rates)} msg/s, {seconds:g} s each")
        cost, runs = trio.run(_run, deployment, pairs, rates, seconds, say, via)
    return {
        "pairs": pairs,
        "instances": len(deployment.instances),
        "via": via,
        "cost": cost,
        "runs": runs,
        "workers": workers,
    }
