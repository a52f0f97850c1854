"""The runtime: one `Broker`, the live sessions, and the code that carries out broker actions.

Applying actions never blocks and never checkpoints: a `Write` appends the two parts it carries
to the session's send queue (a plain list of chunks — the shared MESSAGE tail is never copied per
subscriber) and wakes that session's writer task, which later sends everything queued with one
`send_all`. So a publisher fanning out to ten thousand sessions does ten thousand list appends
and nothing else, and a stalled peer can only ever fill its own send queue.

Each send queue is bounded (frames and bytes). A session that would cross the bound is a slow
consumer: the broker forgets it, an ERROR ("slow consumer") is appended past the bound, and the
session is closed once that is flushed — or when its flush deadline passes, whichever is first.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Final

import trio

from .._codec import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_MAX_HEADER_COUNT,
    HEARTBEAT,
)
from .._connection import DEFAULT_HEARTBEAT, ServerConnection
from .._frames import Headers
from ..broker import Action, Broker, Close, DestinationActive, PrincipalActive, SessionId, Write
from ._hooks import AllowAll, Hooks, Principal, TransportInfo
from ._stats import RuntimeStats

log = logging.getLogger("stomp.trio")

#: Frames and bytes a session may have queued and not yet written before it is a slow consumer.
DEFAULT_MAX_PENDING_FRAMES: Final = 10_000
DEFAULT_MAX_PENDING_BYTES: Final = 64 * 1024 * 1024
#: Seconds a peer has, from its transport opening, to send CONNECT.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: The peer is dead when nothing arrived for `expect interval * DEFAULT_HEARTBEAT_GRACE`. 1.5
#: leaves room for one late beat on a busy network without keeping dead peers around long.
DEFAULT_HEARTBEAT_GRACE: Final = 1.5
#: Seconds a closing session has to flush what is queued (its ERROR, a RECEIPT), and then to
#: close its transport, before both are cut short.
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
#: Seconds `shutdown()` gives every session to receive its ERROR and close.
DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0

SHUTDOWN_MESSAGE: Final = "server shutting down"
SLOW_CONSUMER_MESSAGE: Final = "slow consumer"
CREDENTIALS_EXPIRED_MESSAGE: Final = "credentials expired"


class SendQueue:
    """The per-session state the runtime and the session pump share.

    `chunks` is swapped out whole by the writer (O(1) take-all, which a deque would not give).
    `parked` means the writer task sleeps and nobody woke it yet; `deferred` means the session's
    own reader is applying its frame's actions and will flush them itself when it is done (one
    task switch fewer per request/response); `sending` means the reader is doing that flush.
    """

    __slots__ = (
        "chunks",
        "closing",
        "connection",
        "deferred",
        "frames",
        "id",
        "lot",
        "parked",
        "principal",
        "received_at",
        "scope",
        "send_interval",
        "sending",
        "size",
        "slow",
        "transport",
    )

    def __init__(
        self, session: SessionId, connection: ServerConnection, transport: TransportInfo
    ) -> None:
        self.id = session
        self.connection = connection
        self.transport = transport
        self.principal: Principal | None = None
        self.chunks: list[bytes] = []
        self.frames = 0
        self.size = 0
        #: Set once a Close was applied: queued bytes are flushed, new writes are dropped.
        self.closing = False
        #: Set when the session overflowed: only its ERROR may pass the bound.
        self.slow = False
        #: Seconds between server heart-beats (0: none), known once CONNECT is negotiated.
        self.send_interval = 0.0
        #: The session's whole lifetime runs in this scope; a deadline on it bounds the flush.
        self.scope = trio.CancelScope()
        self.lot = trio.lowlevel.ParkingLot()
        self.parked = False
        self.deferred = False
        self.sending = False
        #: trio time at which the bytes of the frames being handled were read.
        self.received_at = 0.0

    def take(self) -> list[bytes]:
        """Everything queued, leaving the send queue empty."""
        chunks = self.chunks
        self.chunks = []
        self.frames = 0
        self.size = 0
        return chunks

    async def wait(self) -> None:
        """Sleep until woken: something was queued, or the session is closing."""
        self.parked = True
        try:
            await self.lot.park()
        finally:
            self.parked = False

    def wake(self) -> None:
        """Wake the writer if it sleeps."""
        if self.parked:
            self.parked = False
            self.lot.unpark_all()

    def heartbeat(self) -> None:
        """Queue a heart-beat newline (not a frame: it does not count toward the bound)."""
        if not self.closing and not self.chunks:
            self.chunks.append(HEARTBEAT)
            self.size += 1
            self.wake()


class BrokerRuntime:
    """Owns a `Broker` and the live sessions, and carries out the broker's actions.

    Transports (`serve_tcp`, `serve_websocket`, or any stream given to `serve_stream`) register
    their sessions here; application code publishes with `publish()`. Every method except
    `shutdown()` is synchronous and safe to call from any trio task.
    """

    def __init__(
        self,
        broker: Broker | None = None,
        *,
        hooks: Hooks | None = None,
        on_destination_active: Callable[[str, bool], None] | None = None,
        on_principal_active: Callable[[Principal, bool], None] | None = None,
        heartbeat: tuple[int, int] = DEFAULT_HEARTBEAT,
        max_pending_frames: int = DEFAULT_MAX_PENDING_FRAMES,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        heartbeat_grace: float = DEFAULT_HEARTBEAT_GRACE,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        session_ids: Iterator[str] | None = None,
    ) -> None:
        """`heartbeat` is the server's heart-beat limit (`negotiate_heartbeat`: it sends and
        expects beats at what each client asks for, never faster than this, in ms; 0: off);
        `on_destination_active(key, active)` is called, synchronously, when a destination gains
        its first subscriber or loses its last (it must not block: a relay queues the change);
        `on_principal_active(principal, active)` likewise when a principal's first session
        connects or its last one ends (presence tracking; it must not block either)."""
        self.broker = broker if broker is not None else Broker()
        self.hooks: Hooks = hooks if hooks is not None else AllowAll()
        self.on_destination_active = on_destination_active
        self.on_principal_active = on_principal_active
        self.heartbeat = heartbeat
        self.max_pending_frames = max_pending_frames
        self.max_pending_bytes = max_pending_bytes
        self.max_frame_size = max_frame_size
        self.max_body_size = max_body_size
        self.max_header_count = max_header_count
        self.connect_timeout = connect_timeout
        self.heartbeat_grace = heartbeat_grace
        self.close_timeout = close_timeout
        self._ids = (
            session_ids if session_ids is not None else (f"s{n}" for n in itertools.count(1))
        )
        self._sessions: dict[SessionId, SendQueue] = {}
        #: Frame, ERROR and session counts, for whoever exports metrics.
        self.stats = RuntimeStats()
        self._shutting_down = False
        self._idle = trio.Event()

    # -- queries -----------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        """Live transports, connected or still waiting for CONNECT."""
        return len(self._sessions)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def received_at(self, session: SessionId) -> float | None:
        """The trio time at which the frame `session` is handling was read from its
        transport (None: unknown session). Frames read together share it, so a hook can tell
        how long a frame waited behind the ones before it, and refuse work that came too late
        instead of letting a flooding peer's backlog grow."""
        sendq = self._sessions.get(session)
        return sendq.received_at if sendq else None

    def principal(self, session: SessionId) -> Principal | None:
        """Who `session` authenticated as (None: anonymous or unknown)."""
        sendq = self._sessions.get(session)
        return sendq.principal if sendq else None

    # -- for application code ----------------------------------------------------------------

    def publish(self, key: str, body: bytes, headers: Headers = ()) -> None:
        """Deliver `body` to the subscribers of `key` (a destination or `user_key(...)`).

        Never blocks; subscribers that cannot keep up are closed as slow consumers. Raises
        `stomp.RemoteProtocolError` when `key` is a /queue whose backlog is full.
        """
        self.apply(self.broker.publish(key, body, headers))

    def deliver(
        self,
        session: SessionId,
        subscription: str,
        destination: str,
        body: bytes,
        headers: Headers = (),
    ) -> None:
        """Write one MESSAGE to one session only, as if it came through `subscription`.

        Meant for `Hooks.authorize_subscribe`: written just before it returns, such messages
        precede everything the new subscription then receives (see `Hooks`), so a replay of
        stored history joins the live stream with no gap. They carry no `ack` header and need
        no ACK. Never blocks; no-op if the session is gone.
        """
        self.apply(self.broker.direct(session, subscription, destination, body, headers))

    def receipt(self, session: SessionId, receipt_id: str) -> None:
        """Answer a frame's `receipt` later (after `on_app_send` took it). No-op if gone."""
        self.apply(self.broker.receipt(session, receipt_id))

    def refuse(
        self, session: SessionId, message: str, detail: str = "", receipt: str | None = None
    ) -> None:
        """Send `session` an ERROR (`message` header, `detail` body) and close it."""
        self.apply(self.broker.refuse(session, message, detail, receipt))

    def close(self, session: SessionId, reason: str = "closed by the server") -> None:
        """Close `session` once what is queued for it is written (no ERROR frame)."""
        self.apply([Close(session, reason)])

    async def shutdown(self, grace: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        """Refuse new sessions, send every session an ERROR ("server shutting down"), and wait
        until each has flushed it and closed its transport (WebSocket close code 1001).

        `grace` is in seconds from now (not an absolute trio deadline, so that `shutdown(5)`
        means what it says): a session still writing then is cut off, and its transport close
        gets `close_timeout` more. Safe to call more than once.
        """
        self._shutting_down = True
        deadline = trio.current_time() + grace
        for session in list(self._sessions):
            self.refuse(session, SHUTDOWN_MESSAGE)
            sendq = self._sessions.get(session)
            if sendq is not None:
                sendq.scope.deadline = min(sendq.scope.deadline, deadline)
        if not self._sessions:
            return
        with trio.move_on_at(deadline + self.close_timeout):
            await self._idle.wait()

    # -- for the session pump ----------------------------------------------------------------

    def open_session(self, transport: TransportInfo) -> SendQueue:
        """Register a new transport; the caller must `close_session` it when done."""
        session = next(self._ids)
        connection = ServerConnection(
            heartbeat=self.heartbeat,
            max_frame_size=self.max_frame_size,
            max_body_size=self.max_body_size,
            max_header_count=self.max_header_count,
        )
        sendq = self._sessions[session] = SendQueue(session, connection, transport)
        self.stats.sessions_opened += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        return sendq

    def close_session(self, sendq: SendQueue) -> None:
        """The transport is gone: forget the session (its unacked messages are requeued)."""
        sendq.closing = True
        if self._sessions.pop(sendq.id, None) is not None:
            self.stats.sessions_closed += 1
        try:
            self.apply(self.broker.disconnect(sendq.id))
        except Exception:
            log.exception("releasing session %s failed", sendq.id)
        if not self._sessions:
            self._idle.set()

    def apply(self, actions: list[Action]) -> None:
        """Carry out broker actions. Never blocks: writes are queued for the writer tasks."""
        sessions = self._sessions
        stats = self.stats
        for action in actions:
            if type(action) is Write:
                sendq = sessions.get(action.session)
                if sendq is None or sendq.closing:
                    continue
                tail = action.tail
                size = len(action.data) + len(tail)
                if (
                    sendq.frames >= self.max_pending_frames
                    or (sendq.frames and sendq.size + size > self.max_pending_bytes)
                ) and not sendq.slow:
                    self._overflow(sendq)
                    continue
                sendq.chunks.append(action.data)
                if tail:  # only a MESSAGE has a shared tail: count it without parsing
                    sendq.chunks.append(tail)
                    stats.messages_out += 1
                else:
                    stats.frame_out(action.data)
                sendq.frames += 1
                sendq.size += size
                if sendq.parked and not sendq.deferred:
                    sendq.parked = False
                    sendq.lot.unpark_all()
            elif type(action) is Close:
                sendq = sessions.get(action.session)
                if sendq is not None and not sendq.closing:
                    self._begin_close(sendq)
                self.apply(self.broker.disconnect(action.session))
            elif isinstance(action, DestinationActive) and self.on_destination_active is not None:
                try:
                    self.on_destination_active(action.destination, action.active)
                except Exception:
                    log.exception("on_destination_active(%r) failed", action.destination)
            elif isinstance(action, PrincipalActive) and self.on_principal_active is not None:
                try:
                    self.on_principal_active(action.principal, action.active)
                except Exception:
                    log.exception("on_principal_active(%r) failed", action.principal)

    def _overflow(self, sendq: SendQueue) -> None:
        log.warning(
            "session %s is a slow consumer (%d frames, %d bytes queued); closing it",
            sendq.id,
            sendq.frames,
            sendq.size,
        )
        sendq.slow = True
        self.stats.slow_consumers += 1
        self.refuse(
            sendq.id,
            SLOW_CONSUMER_MESSAGE,
            f"more than {self.max_pending_frames} frames or {self.max_pending_bytes} "
            "bytes waiting to be written",
        )

    def _begin_close(self, sendq: SendQueue) -> None:
        sendq.closing = True
        sendq.scope.deadline = min(sendq.scope.deadline, trio.current_time() + self.close_timeout)
        sendq.wake()
