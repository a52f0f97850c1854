"""The session pump: one STOMP session over anything stream-shaped.

`serve_stream` runs three tasks in one nursery, inside the session's cancel scope:

- the reader: `receive_some` -> `ServerConnection.receive_data` -> hooks -> broker -> actions,
  hooks awaited in frame order. What its own frames queued (a RECEIPT, the MESSAGE of a SEND
  to a destination the session subscribes to) it flushes itself when the writer sleeps;
- the writer: sleeps until the send queue has chunks, then sends them all with one `send_all`;
- the timer: the CONNECT deadline, the heart-beats we expect (any byte counts as a sign of
  life), the heart-beat newlines we owe when nothing was written for the interval, and the
  expiry of the session's credentials (`Authenticated.expires_in`).

Whoever ends first decides: the reader ending (EOF, DISCONNECT, an ERROR) lets the writer flush
within the close deadline; the writer ending (transport broken, or flushed after a Close) cancels
the others. Then the broker forgets the session (requeueing its unacked messages) and the
transport is closed, shielded but bounded (a TCP stream lingers: EOF first, then what the
peer still sends is dropped until its EOF, so the kernel never resets the last frames).
Nothing a peer does escapes as an exception.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Final, Protocol, runtime_checkable

import trio
import trio.lowlevel

from .._codec import HEARTBEAT
from .._errors import ProtocolError
from .._events import ClientEvent, Connect, Send, Subscribe, Violation
from ._hooks import Authenticated, Refused, TransportInfo
from ._runtime import CREDENTIALS_EXPIRED_MESSAGE, SHUTDOWN_MESSAGE, BrokerRuntime, SendQueue
from ._stats import INVALID_COMMAND

log = logging.getLogger("stomp.trio")

#: Bytes asked of the transport per read.
RECEIVE_SIZE: Final = 64 * 1024
#: WebSocket close codes: a normal close, and the server going away (shutdown).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
#: Seconds a closing TCP session waits for the peer's EOF, dropping what it still sends.
LINGER: Final = 1.0
#: The timers' grain (seconds): each session's timer wakes on a multiple of it, up to this
#: late. Woken each at its own time, 1 500 sessions beating every 3 s cost 10 % of a core
#: (one loop round and one cancellation per beat, ~200 µs); on the grid, 2 % (~40 µs).
TIMER_GRAIN: Final = 0.1

#: What a broken or closed transport raises; a peer vanishing is routine, not an error.
_TRANSPORT_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Stream(Protocol):
    """Anything stream-shaped: a trio `Stream`, a memory stream, a `MessageStream`."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class HasCloseCode(Protocol):
    """A transport whose close carries a code (WebSocket): the pump sets it before `aclose`."""

    close_code: int


@runtime_checkable
class OneFramePerMessage(Protocol):
    """A message transport (WebSocket) that can carry each frame in a message of its own.

    When `one_frame_per_message` is set, the writer sends each frame, and each heart-beat
    newline, with its own `send_all`, for clients that parse exactly one frame per message;
    otherwise it sends all it has queued at once (fewer, larger messages: cheaper).
    """

    one_frame_per_message: bool


def frames_of(chunks: list[bytes]) -> Iterator[bytes]:
    """The frames, and heart-beat newlines, that `chunks` (a send queue's content) hold, one by one.

    A chunk is a whole frame, a heart-beat newline, or the head of a MESSAGE (which ends with a
    header line's newline) followed by its shared tail: so a frame ends with each chunk that
    ends with NUL, and no parsing is needed to find where.
    """
    start = 0
    for end, chunk in enumerate(chunks, 1):
        if chunk.endswith(b"\0") or chunk == HEARTBEAT:
            yield chunk if end - start == 1 else b"".join(chunks[start:end])
            start = end
    if start < len(chunks):  # never: every frame ends with NUL; sent rather than lost
        yield b"".join(chunks[start:])


async def serve_stream(
    runtime: BrokerRuntime, stream: Stream, transport: TransportInfo | None = None
) -> None:
    """Run one STOMP session over `stream` until either side ends it; then close `stream`.

    Returns normally however the peer behaves (errors are logged); only cancellation of the
    calling task propagates.
    """
    sendq = runtime.open_session(transport or TransportInfo())
    pump = _Pump(runtime, stream, sendq)
    try:
        if runtime.shutting_down:
            runtime.refuse(sendq.id, SHUTDOWN_MESSAGE)
        with sendq.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump.read)
                nursery.start_soon(pump.write)
                nursery.start_soon(pump.tick)
    except Exception:  # a bug of ours; the tasks already log what a peer can cause
        log.exception("session %s failed", sendq.id)
    finally:
        runtime.close_session(sendq)
        if runtime.shutting_down and isinstance(stream, HasCloseCode):
            stream.close_code = CLOSE_GOING_AWAY
        with trio.move_on_after(runtime.close_timeout) as scope:
            scope.shield = True
            if isinstance(stream, trio.SocketStream):
                with trio.move_on_after(LINGER):
                    await _linger(stream)
            try:
                await stream.aclose()
            except Exception as exc:
                log.debug("session %s: closing the transport failed: %r", sendq.id, exc)


async def _linger(stream: trio.SocketStream) -> None:
    """Send EOF, then read and drop what the peer still sends until its EOF.

    Closing a TCP socket with bytes unread (a heart-beat newline on its way) makes the kernel
    reset the connection, and a reset can destroy the last frames before the peer reads them
    (the RECEIPT of its DISCONNECT, an ERROR). The peer sees our EOF at once either way.
    """
    try:
        await stream.send_eof()
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    except _TRANSPORT_ERRORS:
        pass


def _on_grid(deadline: float) -> float:
    """`deadline` rounded up to the timers' grain, so that sessions due close together
    wake in one loop round."""
    if math.isinf(deadline):
        return deadline
    return math.ceil(deadline / TIMER_GRAIN) * TIMER_GRAIN


class _Pump:
    """The reader, writer and timer tasks of one session (sharing state through the send queue)."""

    def __init__(self, runtime: BrokerRuntime, stream: Stream, sendq: SendQueue) -> None:
        self.runtime = runtime
        self.stream = stream
        self.sendq = sendq
        #: Seconds without any byte from the peer before it is declared dead (inf: never).
        self.expect_timeout = float("inf")
        self.connected = False
        self.last_write = trio.current_time()
        #: Since when the peer owes us bytes (the reader waits on it, or on its reading our
        #: reply); None while the reader handles a frame, which may take a hook a while.
        self.receiving_since: float | None = None
        #: When the credentials the session connected with expire (trio time; None: never).
        self.expires_at: float | None = None
        #: Cancelled to make the timer task recompute its deadlines (after CONNECT).
        self.timer_wake = trio.CancelScope()
        self.one_frame_per_message = (
            isinstance(stream, OneFramePerMessage) and stream.one_frame_per_message
        )

    # -- reader --------------------------------------------------------------------------------

    async def read(self) -> None:
        sendq = self.sendq
        runtime = self.runtime
        try:
            await self._read_loop()
        except _TRANSPORT_ERRORS as exc:
            log.debug("session %s: transport failed while reading: %r", sendq.id, exc)
        except Exception:
            log.exception("session %s: reader failed", sendq.id)
            runtime.refuse(sendq.id, "internal server error")
        finally:
            # The peer said all it will say: flush what is queued, within the close deadline.
            if not sendq.closing:
                runtime.close(sendq.id, "peer closed")

    async def _read_loop(self) -> None:
        sendq = self.sendq
        connection = sendq.connection
        receive_some = self.stream.receive_some
        current_time = trio.current_time
        while not sendq.closing:
            self.receiving_since = current_time()
            data = await receive_some(RECEIVE_SIZE)
            self.receiving_since = None
            if not data:
                return
            sendq.received_at = current_time()
            sendq.deferred = True
            try:
                for event in connection.receive_data(bytes(data)):
                    await self._dispatch(event)
                    if sendq.closing:
                        return
            finally:
                sendq.deferred = False
            if sendq.chunks:
                # A peer that stops reading is as silent as one that stops sending.
                self.receiving_since = current_time()
                await self._flush()

    async def _flush(self) -> None:
        """Write what this reader's frames queued, itself if the writer sleeps.

        A RECEIPT or the MESSAGE a SEND produced then leaves without waking another task; the
        writer stays parked (`sending` keeps it from writing concurrently if it is woken) and
        is woken afterwards if more was queued meanwhile.
        """
        sendq = self.sendq
        if not sendq.parked:
            sendq.wake()  # it is busy writing (or already woken) and will take these chunks
            return
        sendq.sending = True
        try:
            chunks = sendq.take()
            if self.one_frame_per_message:
                await self._send_frames(chunks)
            else:
                await self.stream.send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            self.last_write = trio.current_time()
        finally:
            sendq.sending = False
            if sendq.chunks or sendq.closing:
                sendq.wake()

    async def _dispatch(self, event: ClientEvent | Violation) -> None:
        runtime = self.runtime
        sendq = self.sendq
        session = sendq.id
        hooks = runtime.hooks
        runtime.stats.frame_in(
            INVALID_COMMAND if isinstance(event, Violation) else event.frame.command.value
        )
        try:
            if isinstance(event, Send):
                self._before_hook()
                await hooks.authorize_send(sendq.principal, event)
                handled = await hooks.on_app_send(session, sendq.principal, event)
                sendq.deferred = True
                if handled:
                    return
            elif isinstance(event, Subscribe):
                self._before_hook()
                await hooks.authorize_subscribe(session, sendq.principal, event)
                # No checkpoint from here to broker.handle: see the guarantee in `Hooks`.
                sendq.deferred = True
                if sendq.closing:
                    return
                runtime.apply(runtime.broker.handle(session, event))
                if not sendq.closing:  # the broker may still refuse it (a limit)
                    hooks.subscribed(session, sendq.principal, event)
                return
            elif isinstance(event, Connect):
                self._before_hook()
                result = await hooks.authenticate(event, sendq.transport)
                sendq.deferred = True
                if sendq.closing:  # refused (e.g. shutdown) while the hook ran
                    return
                if isinstance(result, Authenticated):
                    principal, expires_in = result.principal, result.expires_in
                else:
                    principal, expires_in = result, None
                if expires_in is not None:
                    self.expires_at = trio.current_time() + max(0.0, expires_in)
                sendq.principal = principal
                runtime.apply(runtime.broker.connect(session, event, principal))
                # Before any checkpoint: the writer, woken by CONNECTED, must see the interval.
                send_ms, expect_ms = event.heartbeat
                sendq.send_interval = send_ms / 1000
                if expect_ms:
                    self.expect_timeout = expect_ms / 1000 * runtime.heartbeat_grace
                self.connected = True
                self.timer_wake.cancel()
                return
            if sendq.closing:
                return
            runtime.apply(runtime.broker.handle(session, event))
        except Refused as exc:
            log.info("session %s: refused: %s %s", session, exc.message, exc.detail)
            runtime.refuse(session, exc.message, exc.detail, event.receipt)
        except ProtocolError as exc:  # e.g. a full /queue on a SEND the broker let through
            runtime.refuse(session, exc.message, exc.detail, event.receipt)

    def _before_hook(self) -> None:
        # A hook may block (a database): what is queued must not wait for it, nor may what
        # other tasks queue for this session meanwhile.
        sendq = self.sendq
        sendq.deferred = False
        if sendq.chunks:
            sendq.wake()

    # -- writer --------------------------------------------------------------------------------

    async def write(self) -> None:
        sendq = self.sendq
        try:
            await self._write_loop()
        except _TRANSPORT_ERRORS as exc:
            log.debug("session %s: transport failed while writing: %r", sendq.id, exc)
        except Exception:
            log.exception("session %s: writer failed", sendq.id)
        finally:
            sendq.closing = True
            # Nobody can be written to any more: stop the reader too.
            sendq.scope.cancel()

    async def _write_loop(self) -> None:
        sendq = self.sendq
        send_all = self.stream.send_all
        current_time = trio.current_time
        while True:
            if sendq.sending:  # the reader is flushing; it wakes us when done
                await sendq.wait()
            elif sendq.chunks:
                chunks = sendq.take()
                if self.one_frame_per_message:
                    await self._send_frames(chunks)
                else:
                    await send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                self.last_write = current_time()
            elif sendq.closing:
                return
            else:
                await sendq.wait()

    async def _send_frames(self, chunks: list[bytes]) -> None:
        for frame in frames_of(chunks):
            await self.stream.send_all(frame)

    # -- timers --------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Enforce the CONNECT deadline and the heart-beats, both ways.

        A separate task rather than a deadline on every read and every idle wait: it costs the
        hot path two clock reads instead of a cancel scope per frame, and wakes about once per
        heart-beat interval. While the reader is busy with a frame (a slow hook), the peer is
        not held responsible for the silence: its heart-beats sit unread in the transport.
        """
        sendq = self.sendq
        runtime = self.runtime
        connect_deadline = trio.current_time() + runtime.connect_timeout
        overdue = False
        while not sendq.closing:
            now = trio.current_time()
            if not self.connected:
                due = connect_deadline
                if now >= due:
                    runtime.refuse(
                        sendq.id,
                        "connect timeout",
                        f"no CONNECT within {runtime.connect_timeout:g} s",
                    )
                    return
            elif self.receiving_since is None:
                due = now + self.expect_timeout
            else:
                due = self.receiving_since + self.expect_timeout
                if now >= due:
                    if not overdue:
                        # After a stall (SIGSTOP, a VM pause, a starved CPU) this timer and
                        # the reader wake in one scheduling round, in either order: the
                        # peer's bytes may be waiting unread. Let the reader run first.
                        overdue = True
                        await trio.lowlevel.checkpoint()
                        continue
                    runtime.refuse(
                        sendq.id,
                        "heart-beat timeout",
                        f"nothing received for {self.expect_timeout:g} s",
                    )
                    return
            overdue = False
            if self.expires_at is not None:
                if now >= self.expires_at:
                    runtime.refuse(
                        sendq.id,
                        CREDENTIALS_EXPIRED_MESSAGE,
                        "the credentials this session connected with have expired; "
                        "connect again with fresh ones",
                    )
                    return
                due = min(due, self.expires_at)
            if sendq.send_interval:
                beat = self.last_write + sendq.send_interval
                if now >= beat:
                    sendq.heartbeat()
                    self.last_write = now
                    beat = now + sendq.send_interval
                due = min(due, beat)
            self.timer_wake = trio.CancelScope(deadline=_on_grid(due))
            with self.timer_wake:
                await trio.sleep_forever()
