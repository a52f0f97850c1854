"""The table of SockJS sessions, and the loop that hands a session's frames to a receiver.

`SockJSSessions` creates a session on the first receiving request for an unknown id, runs its
STOMP session in the nursery it is given (the web app's), and forgets it ``disconnect_delay``
after it closed and its last receiver left. `frames` is what every receiving transport
(polling, streaming, WebSocket) iterates: the open frame, then message, heart-beat and close
frames, with the one-receiver rule and the response limit of streaming transports applied.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final

import trio

from chatd.realtime.sockjs.framing import (
    ANOTHER_CONNECTION,
    HEARTBEAT,
    INTERRUPTED,
    OPEN,
    close_frame,
    message_frame,
)
from chatd.realtime.sockjs.session import DEFAULT_MAX_PENDING_BYTES, SockJSSession, run_session
from stomp.trio import BrokerRuntime, TransportInfo

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT: Final = 25.0
DEFAULT_DISCONNECT_DELAY: Final = 5.0
DEFAULT_RESPONSE_LIMIT: Final = 128 * 1024
DEFAULT_MAX_SESSIONS: Final = 10_000


@dataclass(frozen=True, slots=True)
class SockJSSettings:
    """Timings and limits of the SockJS server (``[server] sockjs_*`` in the config)."""

    heartbeat: float = DEFAULT_HEARTBEAT
    disconnect_delay: float = DEFAULT_DISCONNECT_DELAY
    response_limit: int = DEFAULT_RESPONSE_LIMIT
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    websocket: bool = True
    #: Sessions in the table at once (HTTP transports; WebSocket ones hold a socket instead).
    max_sessions: int = DEFAULT_MAX_SESSIONS
    #: Tell clients (``/info``) and load balancers (a JSESSIONID cookie) that sessions are sticky.
    cookie_needed: bool = False


class SockJSSessions:
    """The SockJS sessions of one server, each carrying a STOMP session on `runtime`."""

    def __init__(self, runtime: BrokerRuntime, settings: SockJSSettings | None = None) -> None:
        self.runtime = runtime
        self.settings = settings or SockJSSettings()
        self._sessions: dict[str, SockJSSession] = {}
        #: Sessions ever opened (all transports, WebSocket included), for metrics.
        self.sessions_opened_total = 0
        self._live = 0

    @property
    def sessions_open(self) -> int:
        """SockJS sessions whose STOMP session is running (all transports)."""
        return self._live

    def lookup(self, session_id: str) -> SockJSSession | None:
        """The known session `session_id` (open or recently closed), or None."""
        return self._sessions.get(session_id)

    @property
    def full(self) -> bool:
        """Whether the table holds ``max_sessions`` sessions (no new one may be created)."""
        return len(self._sessions) >= self.settings.max_sessions

    def create(
        self,
        session_id: str,
        transport: TransportInfo,
        nursery: trio.Nursery,
        *,
        bound_token: str | None = None,
    ) -> SockJSSession:
        """A new session `session_id`, its STOMP session started in `nursery` (the caller
        checks `full` first), with a fresh `secret` for its opener (see `SockJSSession.admits`)
        and bound to `bound_token` too if given."""
        session = self.new_session(session_id)
        session.secret = secrets.token_urlsafe(32)
        session.bound_token = bound_token
        self._sessions[session_id] = session
        nursery.start_soon(self._run, session, transport)
        return session

    def new_session(self, session_id: str) -> SockJSSession:
        """A session outside the table (the WebSocket transport runs its own)."""
        return SockJSSession(session_id, max_pending_bytes=self.settings.max_pending_bytes)

    async def run(self, session: SockJSSession, transport: TransportInfo) -> None:
        """Run the STOMP session of `session` until it ends (counted in `sessions_open`)."""
        self.sessions_opened_total += 1
        self._live += 1
        try:
            await run_session(
                session, self.runtime, transport, disconnect_delay=self.settings.disconnect_delay
            )
        finally:
            self._live -= 1

    async def _run(self, session: SockJSSession, transport: TransportInfo) -> None:
        try:
            await self.run(session, transport)
            # Closed: keep answering the close frame until nobody has asked for a while.
            delay = self.settings.disconnect_delay
            while True:
                if session.receiver is None:
                    quiet_until = session.detached_at + delay
                    if trio.current_time() >= quiet_until:
                        return
                    with trio.move_on_at(quiet_until):
                        await session.wait_change()
                else:
                    await session.wait_change()
        finally:
            if self._sessions.get(session.id) is session:
                del self._sessions[session.id]

    def close_all(self) -> None:
        """Cancel every session (the server is stopping)."""
        for session in list(self._sessions.values()):
            session.close()
            session.scope.cancel()

    async def frames(
        self, session: SockJSSession, *, streaming: bool, limit: float | None = None
    ) -> AsyncGenerator[str, None]:
        """The frames for one receiving request of `session`, as the protocol orders them.

        A polling request (`streaming` false) gets one frame; a streaming one gets frames until
        `limit` characters were sent (default: the response limit), the session closes or the
        consumer stops. A consumer that stops early (the client aborted the request) closes the
        session with 1002 "Connection interrupted", as the protocol allows: a frame may have
        been lost with the request, and the client must not carry on as if nothing was.
        """
        if session.open():
            yield OPEN
            if not streaming:
                return
        if session.closed and not session.has_messages:
            session.touch()  # remembered while clients keep asking
            yield close_frame(*session.close_reason)
            return
        receiver = object()
        if not session.attach(receiver):
            yield close_frame(*ANOTHER_CONNECTION)
            return
        budget = self.settings.response_limit if limit is None else limit
        heartbeat = self.settings.heartbeat
        try:
            while True:
                with trio.move_on_after(heartbeat) as waited:
                    await session.wait()
                messages = session.take()
                if messages:
                    frame = message_frame(messages)
                elif session.closed:
                    yield close_frame(*session.close_reason)
                    return
                elif waited.cancelled_caught:
                    frame = HEARTBEAT
                else:
                    continue
                yield frame
                budget -= len(frame) + 1
                if not streaming or budget <= 0:
                    return
        except BaseException:
            # The request was aborted (or the server is stopping): frames may have been
            # lost on the way, so the session ends and the client starts afresh.
            session.close(*INTERRUPTED)
            raise
        finally:
            session.detach(receiver)
