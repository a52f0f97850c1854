"""The session pump: one STOMP session over anything stream-shaped.

`serve_stream` runs two tasks in one nursery, inside the session's cancel scope:

- the reader: `receive_some` -> `ServerConnection.receive_data` -> hooks -> broker -> actions.
  It also enforces the CONNECT deadline and the heart-beats we expect, with a deadline on each
  read (any byte, heart-beat newline or frame, counts as a sign of life);
- the writer: sleeps until the outbox has chunks, then sends them all with one `send_all`, and
  sends a heart-beat newline when nothing was written for the negotiated interval.

Whoever ends first decides: the reader ending (EOF, DISCONNECT, an ERROR) lets the writer flush
within the close deadline; the writer ending (transport broken, or flushed after a Close) cancels
the reader. Then the broker forgets the session (requeueing its unacked messages) and the
transport is closed, shielded but bounded. Nothing a peer does escapes as an exception.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol, runtime_checkable

import trio

from .._codec import HEARTBEAT
from .._errors import ProtocolError
from .._events import ClientEvent, Connect, Send, Subscribe, Violation
from ._hooks import Refused, TransportInfo
from ._runtime import SHUTDOWN_MESSAGE, BrokerRuntime, Outbox

log = logging.getLogger("stomp.trio")

#: Bytes asked of the transport per read.
RECEIVE_SIZE: Final = 64 * 1024
#: WebSocket close codes: a normal close, and the server going away (shutdown).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001

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


async def serve_stream(runtime: BrokerRuntime, stream: Stream,
                       transport: TransportInfo | None = None) -> None:
    """Run one STOMP session over `stream` until either side ends it; then close `stream`.

    Returns normally however the peer behaves (errors are logged); only cancellation of the
    calling task propagates.
    """
    outbox = runtime.open_session(transport or TransportInfo())
    pump = _Pump(runtime, stream, outbox)
    try:
        if runtime.shutting_down:
            runtime.refuse(outbox.id, SHUTDOWN_MESSAGE)
        with outbox.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump.read)
                nursery.start_soon(pump.write)
    finally:
        runtime.close_session(outbox)
        if runtime.shutting_down and isinstance(stream, HasCloseCode):
            stream.close_code = CLOSE_GOING_AWAY
        with trio.move_on_after(runtime.close_timeout) as scope:
            scope.shield = True
            try:
                await stream.aclose()
            except Exception as exc:
                log.debug("session %s: closing the transport failed: %r", outbox.id, exc)


class _Pump:
    """The reader and writer tasks of one session (state shared through the outbox)."""

    def __init__(self, runtime: BrokerRuntime, stream: Stream, outbox: Outbox) -> None:
        self.runtime = runtime
        self.stream = stream
        self.outbox = outbox
        #: Seconds without any byte from the peer before it is declared dead (inf: never).
        self.expect_timeout = float("inf")
        self.connected = False
        self.last_write = trio.current_time()

    # -- reader --------------------------------------------------------------------------------

    async def read(self) -> None:
        outbox = self.outbox
        runtime = self.runtime
        try:
            await self._read_loop()
        except _TRANSPORT_ERRORS as exc:
            log.debug("session %s: transport failed while reading: %r", outbox.id, exc)
        except Exception:
            log.exception("session %s: reader failed", outbox.id)
            runtime.refuse(outbox.id, "internal server error")
        finally:
            # The peer said all it will say: flush what is queued, within the close deadline.
            if not outbox.closing:
                runtime.close(outbox.id, "peer closed")

    async def _read_loop(self) -> None:
        outbox = self.outbox
        connection = outbox.connection
        receive_some = self.stream.receive_some
        deadline = trio.current_time() + self.runtime.connect_timeout
        while not outbox.closing:
            with trio.CancelScope(deadline=deadline) as scope:
                data = await receive_some(RECEIVE_SIZE)
            if scope.cancelled_caught:
                if self.connected:
                    self.runtime.refuse(outbox.id, "heart-beat timeout",
                                        f"nothing received for {self.expect_timeout:g} s")
                else:
                    self.runtime.refuse(outbox.id, "connect timeout",
                                        f"no CONNECT within {self.runtime.connect_timeout:g} s")
                return
            if not data:
                return
            for event in connection.receive_data(bytes(data)):
                await self._dispatch(event)
                if outbox.closing:
                    return
            if self.connected:
                deadline = trio.current_time() + self.expect_timeout

    async def _dispatch(self, event: ClientEvent | Violation) -> None:
        runtime = self.runtime
        outbox = self.outbox
        session = outbox.id
        hooks = runtime.hooks
        try:
            if isinstance(event, Send):
                await hooks.authorize_send(outbox.principal, event)
                if await hooks.on_app_send(session, outbox.principal, event):
                    return
            elif isinstance(event, Subscribe):
                await hooks.authorize_subscribe(outbox.principal, event)
            elif isinstance(event, Connect):
                principal = await hooks.authenticate(event, outbox.transport)
                if outbox.closing:  # refused (e.g. shutdown) while the hook ran
                    return
                outbox.principal = principal
                runtime.apply(runtime.broker.connect(session, event, principal))
                # Before any checkpoint: the writer, woken by CONNECTED, must see the interval.
                send_ms, expect_ms = event.heartbeat
                outbox.send_interval = send_ms / 1000
                if expect_ms:
                    self.expect_timeout = expect_ms / 1000 * runtime.heartbeat_grace
                self.connected = True
                return
            if outbox.closing:
                return
            runtime.apply(runtime.broker.handle(session, event))
        except Refused as exc:
            log.info("session %s: refused: %s %s", session, exc.message, exc.detail)
            runtime.refuse(session, exc.message, exc.detail, event.receipt)
        except ProtocolError as exc:  # e.g. a full /queue on a SEND the broker let through
            runtime.refuse(session, exc.message, exc.detail, event.receipt)

    # -- writer --------------------------------------------------------------------------------

    async def write(self) -> None:
        outbox = self.outbox
        try:
            await self._write_loop()
        except _TRANSPORT_ERRORS as exc:
            log.debug("session %s: transport failed while writing: %r", outbox.id, exc)
        except Exception:
            log.exception("session %s: writer failed", outbox.id)
        finally:
            outbox.closing = True
            # Nobody can be written to any more: stop the reader too.
            outbox.scope.cancel()

    async def _write_loop(self) -> None:
        outbox = self.outbox
        send_all = self.stream.send_all
        current_time = trio.current_time
        while True:
            if outbox.chunks:
                chunks = outbox.take()
                await send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                self.last_write = current_time()
            elif outbox.closing:
                return
            elif outbox.send_interval:
                due = self.last_write + outbox.send_interval
                if current_time() >= due:
                    await send_all(HEARTBEAT)
                    self.last_write = current_time()
                else:
                    with trio.move_on_at(due):
                        await outbox.wait()
            else:
                await outbox.wait()
