"""One soak client: a user with one STOMP connection (WebSocket or SockJS) to its home
instance that reconnects by itself and resumes its session topic with ``x-since-seq`` (as the
demo page does), sends what the scheduler gives it (REST or ``/app/chat.send``) until each is
acknowledged, with typing and delivered/seen receipts, and records what it receives.

A send is retried with the same ``clientMessageId`` until it is acknowledged (a repeat is
answered with the stored original), so "acknowledged" is the ledger's truth and a lost
connection never loses an intent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import ssl
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from bench.wire import FrameSplitter, WireError, frame
from soak.transports import WS, SockJSTransport, Transport, WsTransport

ACK_TIMEOUT = 15.0  # a send not answered within this is sent again (same clientMessageId)
MAX_PENDING = 8  # intents a client holds; the scheduler skips a client that has more
CONNECT_TIMEOUT = 15.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0
BUSY_BACKOFF_MAX = 30.0  # seconds at most between retries of a send refused busy
HB_TOLERANCE = 2.5  # silence longer than this many server beat intervals = a dead connection
RETRYABLE = {429, 503}


def busy_delay(retry_after: float, streak: int) -> float:
    """How long a client waits after its `streak`-th busy refusal in a row: at least the
    Retry-After it was given, doubled per refusal up to `BUSY_BACKOFF_MAX`, with jitter.

    Clients that came back sooner (half to all of Retry-After, as this one did) kept an
    overloaded server refusing: 1 000 retries a second cost it the CPU it needed to store."""
    return min(BUSY_BACKOFF_MAX, retry_after * 2.0 ** (streak - 1)) * random.uniform(1, 1.5)


class Gone(Exception):
    """The connection is over (closed, ERROR frame, heart-beat timeout)."""


EXPECTED = (
    Gone,
    WireError,
    trio.TooSlowError,
    OSError,
    ConnectionError,
    httpx.HTTPError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _cause(exc: BaseException) -> str:
    """A short name for why a connection ended, for the table."""
    if isinstance(exc, Gone):
        return str(exc)
    if isinstance(exc, WireError):
        return "closed"
    if isinstance(exc, trio.TooSlowError):
        return "connect timeout"
    return type(exc).__name__


@dataclass
class Intent:
    cmid: str
    via: str  # "rest" or "stomp"
    content: str
    first_try: float = 0.0


@dataclass
class Ack:
    cmid: str
    message_id: str
    session: str
    seq: int
    instance: int
    at: float  # monotonic
    latency: float


@dataclass
class Stats:
    """What every client adds to, read by the checks."""

    acks: dict[str, Ack] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)  # non-retryable answers
    busy: Counter[str] = field(default_factory=Counter)  # 429/503 answers (retried)
    server_errors: Counter[str] = field(default_factory=Counter)  # ERROR frames by message
    #: (monotonic time, ERROR message, instance, transport) of each ERROR frame
    error_frames: list[tuple[float, str, int, str]] = field(default_factory=list)
    disconnects: Counter[str] = field(default_factory=Counter)  # by cause
    received: Counter[str] = field(default_factory=Counter)  # MESSAGE frames by event
    last_ack: dict[int, float] = field(default_factory=dict)  # instance -> monotonic time
    unanswered: int = 0  # sends repeated because no answer came within ACK_TIMEOUT
    skipped: int = 0

    def merge(self, other: Stats) -> None:
        """Add another generator process's figures to these."""
        self.acks.update(other.acks)
        for mine, theirs in (
            (self.refused, other.refused),
            (self.busy, other.busy),
            (self.server_errors, other.server_errors),
            (self.disconnects, other.disconnects),
            (self.received, other.received),
        ):
            mine.update(theirs)
        self.error_frames += other.error_frames
        for instance, at in other.last_ack.items():
            self.last_ack[instance] = max(at, self.last_ack.get(instance, at))
        self.unanswered += other.unanswered
        self.skipped += other.skipped


@dataclass
class ClientRecord:
    """What the checks read of a client once the run is over (a client lives in a shard
    process; this crosses back to the parent)."""

    index: int
    kind: str
    instance: int
    session: str
    seen: dict[str, int]  # message id -> seq, of what arrived on the session topic
    last_seq: int
    duplicates: int
    reordered: int
    pending: int  # intents never acknowledged
    connected: bool
    connects: int
    history: list[tuple[float, str]]
    arrivals: list[tuple[float, int, int]]


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """(command, headers, body) of one NUL-less frame (leading heart-beat EOLs dropped)."""
    raw = raw.lstrip(b"\r\n")
    head, _, body = raw.partition(b"\n\n")
    lines = head.decode("utf-8", "replace").split("\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.rstrip("\r").partition(":")
        headers.setdefault(name, value)
    return lines[0].rstrip("\r"), headers, body


class Client:
    """A user of a pair; see the module docstring."""

    def __init__(
        self,
        index: int,
        email: str,
        token: str,
        session: str,
        instance: int,
        host: str,
        port: int,
        kind: str,
        stats: Stats,
        *,
        heartbeat_ms: int,
        client_heartbeat_ms: int,
        receipt_every: int,
    ) -> None:
        self.index, self.email, self.token, self.session = index, email, token, session
        self.instance, self.host, self.port, self.kind = instance, host, port, kind
        self.stats = stats
        self.http: httpx.AsyncClient | None = None  # its own, while `run` runs
        #: What the server beats at (its silence for 2.5 of these = a dead connection), and
        #: what this client beats at (the server's grace is 1.5 of these).
        self.heartbeat_ms, self.client_heartbeat_ms = heartbeat_ms, client_heartbeat_ms
        self.receipt_every = receipt_every
        self.pending: deque[Intent] = deque()
        self.wake = trio.Event()
        #: Set by `stop_sending` (the settle phase): no send is tried from then on, so no
        #: message is stored after the final check; `sending` is true while one is tried.
        self.stopped = False
        self.sending = False
        self.answers: dict[str, tuple[trio.Event, list[dict[str, Any]]]] = {}
        # what arrived on the session topic, deduplicated by message id
        self.seen: dict[str, int] = {}
        self.last_seq = 0
        self.duplicates = 0  # frames of a message already seen (replays after a resume)
        self.reordered = 0  # a new message with a seq below one already seen
        self.connected = False
        self.connects = 0
        self.attempt = 0
        self.history: list[tuple[float, str]] = []  # (monotonic time, what happened)
        self.arrivals: list[tuple[float, int, int]] = []  # (time, connection number, seq)
        self.peer_messages = 0
        self.extras_in, self.extras = trio.open_memory_channel[bytes](8)

    def record(self) -> ClientRecord:
        return ClientRecord(
            self.index,
            self.kind,
            self.instance,
            self.session,
            self.seen,
            self.last_seq,
            self.duplicates,
            self.reordered,
            len(self.pending),
            self.connected,
            self.connects,
            self.history,
            self.arrivals,
        )

    # -- scheduling --------------------------------------------------------------------------

    def stop_sending(self) -> None:
        """Try no send from now on (the one being tried finishes): what is pending stays
        pending and counts as never acknowledged."""
        self.stopped = True
        self.wake.set()

    def offer(self, intent: Intent) -> bool:
        if len(self.pending) >= MAX_PENDING:
            return False
        self.pending.append(intent)
        self.wake.set()
        return True

    # -- connection loop ---------------------------------------------------------------------

    async def run(self, http_timeout: httpx.Timeout) -> None:
        """Connect, chat, and reconnect whenever the connection is lost, until cancelled.

        The client has HTTP connections and cookies of its own (REST sends, SockJS), as a
        browser page does. One httpx client shared by thousands scanned its whole pool on each
        request (40 % of the generator's CPU for the REST sends alone), and its one cookie jar
        grew by a cookie per SockJS session."""
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=4),
            timeout=http_timeout,
            verify=_tls_context(),
        ) as own:
            self.http = own
            await self._reconnecting()

    async def _reconnecting(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            began = trio.current_time()
            try:
                await self._connection()
                cause = "ended"
            except Exception as exc:
                leaves = list(_leaves(exc))
                if not all(isinstance(e, EXPECTED) for e in leaves):
                    raise  # a bug of the harness: let the run fail loudly
                cause = _cause(leaves[0])
            except BaseExceptionGroup as group:
                # The run ends (cancelled) just as the connection failed: only the cancellation
                # goes on, or the failure would end the whole run as if it were a harness bug.
                cancelled = group.subgroup(lambda e: isinstance(e, trio.Cancelled))
                if cancelled is None or cancelled is group:
                    raise
                raise cancelled from None
            was = self.connected
            self.connected = False
            self.history.append((trio.current_time(), f"#{self.attempt} lost: {cause}"))
            if was:
                self.stats.disconnects[cause] += 1
            if trio.current_time() - began > 10:
                delay = BACKOFF_FIRST
            await trio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _open(self, nursery: trio.Nursery) -> Transport:
        if self.kind == WS:
            return await WsTransport.open(self.host, self.port)
        assert self.http is not None
        return await SockJSTransport.open(
            self.http, f"http://{self.host}:{self.port}", self.kind, self.token, nursery
        )

    async def _connection(self) -> None:
        self.attempt += 1
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT):
                transport = await self._open(nursery)
            try:
                splitter = FrameSplitter()
                hb, own = self.heartbeat_ms, self.client_heartbeat_ms
                with trio.fail_after(CONNECT_TIMEOUT):
                    await transport.send(
                        frame(
                            "CONNECT",
                            {
                                "accept-version": "1.2",
                                "host": "/",
                                "passcode": self.token,
                                "heart-beat": f"{own},{hb}",
                            },
                        )
                    )
                    command, headers, _ = await self._first(transport, splitter)
                if command != "CONNECTED":
                    self.stats.server_errors[headers.get("message", command)] += 1
                    raise Gone("refused")
                sx, sy = (int(x) for x in headers.get("heart-beat", "0,0").split(","))
                incoming = max(sx, hb) / 1000 if sx else 0.0
                outgoing = max(sy, own) / 1000 if sy else 0.0
                subscribed = trio.Event()
                await transport.send(
                    b"".join(
                        [
                            frame(
                                "SUBSCRIBE",
                                {
                                    "id": "t",
                                    "destination": f"/topic/session.{self.session}",
                                    "ack": "auto",
                                    "x-since-seq": str(self.last_seq),
                                },
                            ),
                            frame("SUBSCRIBE", {"id": "a", "destination": "/user/queue/ack"}),
                            frame("SUBSCRIBE", {"id": "e", "destination": "/user/queue/error"}),
                            frame(
                                "SUBSCRIBE",
                                {
                                    "id": "r",
                                    "destination": "/user/queue/receipts",
                                    "receipt": "subscribed",
                                },
                            ),
                        ]
                    )
                )
                nursery.start_soon(self._reader, transport, splitter, incoming, subscribed)
                with trio.fail_after(CONNECT_TIMEOUT):
                    await subscribed.wait()
                self.connected = True
                self.connects += 1
                self.history.append(
                    (trio.current_time(), f"#{self.attempt} subscribed since {self.last_seq}")
                )
                if outgoing:
                    nursery.start_soon(self._beat, transport, outgoing)
                nursery.start_soon(self._extras, transport)
                await self._sender(transport)
            finally:
                nursery.cancel_scope.cancel()
                with trio.move_on_after(1) as cleanup:
                    cleanup.shield = True
                    await transport.aclose()

    async def _first(
        self,
        transport: Transport,
        splitter: FrameSplitter,
    ) -> tuple[str, dict[str, str], bytes]:
        while True:
            data = await transport.recv()
            if not data:
                raise Gone("closed")
            for raw in splitter.feed(data):
                if raw.strip(b"\r\n"):
                    return parse(raw)

    async def _beat(self, transport: Transport, every: float) -> None:
        """A heart-beat every half interval (STOMP allows sooner than promised): a SockJS
        beat is an HTTP POST that can wait behind a send's, the server's grace is 1.5
        intervals, and on a machine this loaded a generator's loop wakes up to a couple of
        seconds late (beating every interval, the 3 000-client run saw 48 000 heart-beat
        timeouts in two minutes)."""
        while True:
            await trio.sleep(every / 2)
            await transport.send(b"\n")

    async def _reader(
        self, transport: Transport, splitter: FrameSplitter, incoming: float, subscribed: trio.Event
    ) -> None:
        timeout = incoming * HB_TOLERANCE if incoming else float("inf")
        while True:
            with trio.move_on_after(timeout):
                data = await transport.recv()
                if not data:
                    raise Gone("closed")
                for raw in splitter.feed(data):
                    if raw.strip(b"\r\n"):
                        self._frame(*parse(raw), subscribed)
                continue
            raise Gone("heart-beat timeout")

    def _frame(
        self, command: str, headers: dict[str, str], body: bytes, subscribed: trio.Event
    ) -> None:
        if command == "RECEIPT":
            subscribed.set()
            return
        if command == "ERROR":
            message = headers.get("message", "?")
            self.stats.server_errors[message] += 1
            self.stats.error_frames.append((trio.current_time(), message, self.instance, self.kind))
            raise Gone("ERROR frame")
        if command != "MESSAGE":
            return
        sub, event = headers.get("subscription"), headers.get("event", "")
        self.stats.received[f"{sub}:{event}"] += 1
        if sub == "t" and event == "message":
            self._topic_message(json.loads(body))
        elif sub in ("a", "e"):
            answer = json.loads(body)
            waiter = self.answers.get(answer.get("clientMessageId"))
            if waiter is not None:
                answer["_ok"] = sub == "a"
                waiter[1].append(answer)
                waiter[0].set()

    def _topic_message(self, message: dict[str, Any]) -> None:
        mid, seq = message["messageId"], int(message["seq"])
        self.arrivals.append((trio.current_time(), self.attempt, seq))
        if mid in self.seen:
            self.duplicates += 1
            return
        if seq <= self.last_seq:
            self.reordered += 1
        self.seen[mid] = seq
        self.last_seq = max(self.last_seq, seq)
        if message.get("senderEmail") != self.email:
            self.peer_messages += 1
            n = self.peer_messages
            if self.receipt_every and n % self.receipt_every == 0:
                status = "seen" if n % (2 * self.receipt_every) == 0 else "delivered"
                body = json.dumps({"sessionId": self.session, "upToSeq": seq}).encode()
                with contextlib.suppress(trio.WouldBlock):
                    self.extras_in.send_nowait(
                        frame(
                            "SEND",
                            {
                                "destination": f"/app/chat.{status}",
                                "content-type": "application/json",
                            },
                            body,
                        )
                    )

    async def _extras(self, transport: Transport) -> None:
        """Receipts (and typing) go out here, so the reader never waits on a send."""
        async for data in self.extras:
            await transport.send(data)

    # -- sending -----------------------------------------------------------------------------

    async def _sender(self, transport: Transport) -> None:
        busy_streak = 0  # busy refusals in a row
        while True:
            while self.stopped or not self.pending:
                self.wake = trio.Event()
                await self.wake.wait()
            intent = self.pending[0]
            if not intent.first_try:
                intent.first_try = trio.current_time()
            self.sending = True
            try:
                if intent.via == "rest":
                    answer = await self._rest(intent)
                else:
                    answer = await self._stomp(transport, intent)
            finally:
                self.sending = False
            if answer is None:
                self.stats.unanswered += 1
                continue  # no answer: send it again (a repeat returns the original)
            if answer["_ok"]:
                busy_streak = 0
                self.pending.popleft()
                now = trio.current_time()
                self.stats.acks[intent.cmid] = Ack(
                    intent.cmid,
                    answer["messageId"],
                    answer["sessionId"],
                    int(answer["seq"]),
                    self.instance,
                    now,
                    now - intent.first_try,
                )
                self.stats.last_ack[self.instance] = now
                continue
            status = str(answer.get("status"))
            if answer.get("_code") in RETRYABLE or status in (
                "SERVICE_UNAVAILABLE",
                "TOO_MANY_REQUESTS",
            ):
                self.stats.busy[status] += 1
                busy_streak += 1
                await trio.sleep(busy_delay(float(answer.get("retryAfter") or 1), busy_streak))
                continue
            self.stats.refused[f"{status}: {answer.get('errorMsg', '')[:60]}"] += 1
            self.pending.popleft()

    async def _stomp(self, transport: Transport, intent: Intent) -> dict[str, Any] | None:
        event: tuple[trio.Event, list[dict[str, Any]]] = (trio.Event(), [])
        self.answers[intent.cmid] = event
        try:
            if random.random() < 0.3:
                await transport.send(
                    frame(
                        "SEND",
                        {"destination": "/app/chat.typing"},
                        json.dumps({"sessionId": self.session}).encode(),
                    )
                )
            body = json.dumps(
                {
                    "sessionId": self.session,
                    "content": intent.content,
                    "clientMessageId": intent.cmid,
                }
            ).encode()
            await transport.send(
                frame(
                    "SEND",
                    {"destination": "/app/chat.send", "content-type": "application/json"},
                    body,
                )
            )
            with trio.move_on_after(ACK_TIMEOUT):
                await event[0].wait()
                return event[1][0]
            return None
        finally:
            self.answers.pop(intent.cmid, None)

    async def _rest(self, intent: Intent) -> dict[str, Any] | None:
        body = {
            "sessionId": self.session,
            "content": intent.content,
            "clientMessageId": intent.cmid,
        }
        assert self.http is not None
        try:
            with trio.fail_after(ACK_TIMEOUT):
                response = await self.http.post(
                    f"http://{self.host}:{self.port}/api/chat/message",
                    json=body,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
        except (httpx.HTTPError, trio.TooSlowError, OSError):
            await trio.sleep(1)
            return None
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {"status": str(response.status_code), "errorMsg": response.text[:60]}
        answer["_ok"] = response.status_code in (200, 201)
        answer["_code"] = response.status_code
        if response.status_code in RETRYABLE:
            answer.setdefault("retryAfter", response.headers.get("retry-after", "1"))
        return answer


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every client's own HTTP client (each would build one; the soak
    speaks plain HTTP, but httpx makes the context up front)."""
    return ssl.create_default_context()
