"""One SockJS session: a byte stream for the STOMP session pump on one side, frames for
whichever HTTP request (or WebSocket) currently receives on the other.

SockJS sessions outlive the HTTP requests that carry them: a polling client sends with one
request (``xhr_send``) and receives with the next (``xhr``), so the STOMP session runs in its
own task (`run_session`) and the requests only feed its inbox or drain its outbox. The rules:

- one receiver at a time (a second is told ``c[2010,"Another connection still open"]``);
- a session with no receiver for ``disconnect_delay`` seconds is closed (the client is gone);
- once closed, every receiver gets the close frame until the session is forgotten,
  ``disconnect_delay`` after its last receiver left (`SockJSSessions` keeps the table);
- a receiving request the client aborts closes the session with 1002 (see `frames`);
- what the broker sends waits in the outbox for the next receiver; past ``max_pending_bytes``
  `send_all` blocks, which the broker runtime sees as a slow consumer.
"""

from __future__ import annotations

import enum
import hmac
import logging
from typing import Final

import trio

from chatd.realtime.sockjs.framing import GO_AWAY
from stomp.trio import BrokerRuntime, TransportInfo, serve_stream

log = logging.getLogger(__name__)

#: Client messages queued for the STOMP reader before `feed` waits (back-pressure on sends).
INBOX_SIZE: Final = 64
DEFAULT_MAX_PENDING_BYTES: Final = 1024 * 1024


class State(enum.Enum):
    NEW = "new"  # created; the open frame is not sent yet
    OPEN = "open"
    CLOSED = "closed"


class SockJSSession:
    """The state of one SockJS session, and the `Stream` its STOMP session runs over."""

    def __init__(
        self, session_id: str, *, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    ) -> None:
        self.id = session_id
        self.state = State.NEW
        self.close_reason: tuple[int, str] = GO_AWAY
        self.max_pending_bytes = max_pending_bytes
        #: The current receiver (any token), and since when there has been none.
        self.receiver: object | None = None
        self.detached_at = trio.current_time()
        self._messages: list[str] = []
        self._pending_bytes = 0
        self._changed = trio.Event()
        self._inbox_send, self._inbox = trio.open_memory_channel[bytes](INBOX_SIZE)
        self._partial = b""
        #: Who may use the session (HTTP transports): the holder of `secret`, which the server
        #: sets as a cookie on the request that opened it, or of `bound_token`, the
        #: ``access_token`` query parameter it was opened with (None: none).
        self.secret: str | None = None
        self.bound_token: str | None = None
        #: Cancels the session's task (`run_session` runs inside it; `close_all` cancels it).
        self.scope = trio.CancelScope()

    def admits(self, cookies: list[str], token: str | None) -> bool:
        """Whether a request carrying the cookie values `cookies` and the query token `token`
        comes from the client that opened the session.

        A session id travels in URLs (proxies' logs, browser history, Referer headers): knowing
        it must not be enough to listen to, or speak in, somebody else's STOMP session.
        """
        if self.secret is not None and any(
            hmac.compare_digest(given.encode(), self.secret.encode()) for given in cookies
        ):
            return True
        return (
            self.bound_token is not None
            and token is not None
            and hmac.compare_digest(token.encode(), self.bound_token.encode())
        )

    # -- the receiving side (HTTP requests, the WebSocket) -------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def open(self) -> bool:
        """Mark the session open; True the first time (the caller sends the open frame)."""
        if self.state is State.NEW:
            self.state = State.OPEN
            return True
        return False

    def attach(self, receiver: object) -> bool:
        """Make `receiver` the one receiver; False if another one is attached."""
        if self.receiver is not None and self.receiver is not receiver:
            return False
        self.receiver = receiver
        return True

    def detach(self, receiver: object) -> None:
        """`receiver` is gone; the disconnect delay starts."""
        if self.receiver is receiver:
            self.receiver = None
            self.detached_at = trio.current_time()
            self._wake()

    def touch(self) -> None:
        """A client asked for the session without staying attached (it got the close frame):
        the disconnect delay starts again."""
        if self.receiver is None:
            self.detached_at = trio.current_time()
            self._wake()

    def take(self) -> list[str]:
        """The messages waiting for the client (they are the caller's to deliver now)."""
        messages, self._messages = self._messages, []
        self._pending_bytes = 0
        self._wake()  # a `send_all` waiting for room may go on
        return messages

    @property
    def has_messages(self) -> bool:
        return bool(self._messages)

    async def wait(self) -> None:
        """Sleep until there are messages, the session closed or a receiver changed."""
        if self._messages or self.closed:
            return
        await self._changed.wait()

    async def wait_change(self) -> None:
        """Sleep until anything changes: messages, close, a receiver coming or going."""
        await self._changed.wait()

    async def feed(self, messages: list[str]) -> None:
        """Hand the client's `messages` to the STOMP session, waiting while its inbox is full.

        Messages for a closed session are dropped: the client learns of the close from its
        receiving request.
        """
        for message in messages:
            if not message:
                continue
            try:
                await self._inbox_send.send(message.encode("utf-8", "surrogatepass"))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return

    def close(self, code: int = GO_AWAY[0], reason: str = GO_AWAY[1]) -> None:
        """Close the session (idempotent): the STOMP reader sees end-of-stream, receivers get
        the close frame after the messages still waiting."""
        if self.closed:
            return
        self.state = State.CLOSED
        self.close_reason = (code, reason)
        self._inbox_send.close()
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- the Stream the STOMP session pump uses -------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes of what the client sent; b"" once the session is closed."""
        data = self._partial
        self._partial = b""
        if not data:
            try:
                data = await self._inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return b""
        if max_bytes is not None and len(data) > max_bytes:
            data, self._partial = data[:max_bytes], data[max_bytes:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue `data` (STOMP frames, UTF-8) as one SockJS message for the client.

        Waits while more than ``max_pending_bytes`` are queued; raises
        `trio.BrokenResourceError` once the session is closed.
        """
        while not self.closed and self._pending_bytes > self.max_pending_bytes:
            await self._changed.wait()
        if self.closed:
            raise trio.BrokenResourceError("the SockJS session is closed")
        text = bytes(data).decode("utf-8", "replace")
        self._messages.append(text)
        self._pending_bytes += len(text)
        self._wake()

    async def aclose(self) -> None:
        """The STOMP session is over: close with ``c[3000,"Go away!"]``."""
        self.close()


async def run_session(
    session: SockJSSession,
    runtime: BrokerRuntime,
    transport: TransportInfo,
    *,
    disconnect_delay: float,
) -> None:
    """Carry one STOMP session over `session` until either side ends it.

    Closes the session when no receiver has been attached for `disconnect_delay` seconds.
    Returns when the STOMP session is over (the session is then closed).
    """
    try:
        with session.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_receivers, session, disconnect_delay)
                await serve_stream(runtime, session, transport)
                nursery.cancel_scope.cancel()
    finally:
        session.close()


async def _watch_receivers(session: SockJSSession, disconnect_delay: float) -> None:
    while not session.closed:
        if session.receiver is None:
            idle_until = session.detached_at + disconnect_delay
            if trio.current_time() >= idle_until:
                log.debug(
                    "sockjs session %s: no receiver for %gs, closing", session.id, disconnect_delay
                )
                session.close()
                return
            with trio.move_on_at(idle_until):
                await session.wait_change()
        else:
            await session.wait_change()
