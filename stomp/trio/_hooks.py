"""The application's say in a STOMP session: authentication, authorization, `/app` handlers.

The runtime awaits every hook in the session's reader task, in frame order, so whatever a hook
decides is ordered with the session's other frames: a SUBSCRIBE's RECEIPT is written only after
`authorize_subscribe` returned, and a SEND that follows it is not looked at before.

One more guarantee, which makes history replay possible: between `authorize_subscribe`
returning and the subscription becoming active there is no checkpoint. Whatever the hook
writes to its own session last (`BrokerRuntime.deliver`) without awaiting after it is
therefore followed, with nothing lost and nothing repeated, by every message published to the
destination from then on: no other task can run in between.

`subscribed`, the one synchronous hook, runs right after an allowed SUBSCRIBE became active and
its RECEIPT was queued, again with no checkpoint in between: what it writes to the session
follows the RECEIPT and precedes every message published from then on (a snapshot of state
the subscriber then keeps current from live messages).

A hook refuses by raising `Refused(message, detail)`: the session gets an ERROR frame with that
`message` header (and `detail` as its body) and is closed. Any other exception is a bug in the
application: it is logged, and the session is closed with an "internal server error" ERROR, so
one misbehaving peer never takes the server down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qs

from .._events import Connect, Send, Subscribe
from .._users import ACCESS_REFUSED, Users
from ..broker import SessionId

#: Who a session acts for (a user name or e-mail); None is an anonymous session.
Principal = str


class Refused(Exception):
    """Raised by a hook to refuse a frame: ERROR (`message` header, `detail` body), then close."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Authenticated:
    """What `Hooks.authenticate` may return instead of a bare principal.

    `expires_in` (seconds from the CONNECT) is how long the credentials stay valid: the runtime
    then closes the session with an ERROR ("credentials expired") at that time, so a
    long-lived connection cannot outlive its token. None: the session may live indefinitely.
    """

    principal: Principal | None
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What the transport knew about the peer before the first STOMP frame.

    Browsers cannot set headers on a WebSocket handshake, so tokens often travel in the query
    string (`?access_token=...`): `authenticate` gets all of it.
    """

    #: "tcp", "websocket", or whatever an embedding application calls its transport.
    transport: str = "stream"
    #: (host, port) of the peer, when the transport has one.
    remote: tuple[str, int] | None = None
    #: WebSocket handshake path (without the query string) and raw query string.
    path: str = ""
    query_string: str = ""
    #: WebSocket handshake headers, names lower-cased.
    headers: tuple[tuple[str, str], ...] = ()
    #: The negotiated WebSocket subprotocol (`v12.stomp`, ...), if any.
    subprotocol: str | None = None

    def query(self) -> dict[str, list[str]]:
        """The query string parsed into name -> values."""
        return parse_qs(self.query_string)

    def header(self, name: str) -> str | None:
        """The first handshake header called `name` (case-insensitive), else None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Hooks(Protocol):
    """What an application implements to guard and extend the broker; all methods are async."""

    async def authenticate(
        self, event: Connect, transport: TransportInfo
    ) -> Principal | Authenticated | None:
        """The principal of a connecting session, or None for an anonymous one; an
        `Authenticated` also says when the session's credentials expire.

        Raises Refused to refuse the CONNECT.
        """
        ...

    async def authorize_subscribe(
        self, session: SessionId, principal: Principal | None, event: Subscribe
    ) -> None:
        """Return to allow the SUBSCRIBE; raise Refused to refuse it (the session closes).

        The subscription becomes active right after this returns, with no checkpoint in
        between (see the module docstring): messages the hook writes to `session` with
        `BrokerRuntime.deliver` after its last await come before any live one.
        """
        ...

    def subscribed(self, session: SessionId, principal: Principal | None, event: Subscribe) -> None:
        """The SUBSCRIBE `authorize_subscribe` allowed is active and its RECEIPT queued; not
        called when the broker refused it. Synchronous: see the module docstring."""
        ...

    async def authorize_send(self, principal: Principal | None, event: Send) -> None:
        """Return to allow the SEND; raise Refused to refuse it (the session closes)."""
        ...

    async def on_app_send(
        self, session: SessionId, principal: Principal | None, event: Send
    ) -> bool:
        """Handle a SEND to an application destination (e.g. `/app/...`).

        Return True when handled: the runtime then does not route the frame through the broker
        and does not answer its `receipt` either; the application answers it itself, once the
        work is done, with `BrokerRuntime.receipt(session, event.receipt)`. Return False to let
        the broker route it. Called for every allowed SEND, transactional or not: application
        destinations do not take part in STOMP transactions.
        """
        ...


class AllowAll:
    """The default hooks: anonymous sessions, everything allowed, no application destinations.

    `login` is not trusted as an identity (there is no password check), so every session is
    anonymous and `/user/...` subscriptions are refused by the broker.
    """

    async def authenticate(
        self, event: Connect, transport: TransportInfo
    ) -> Principal | Authenticated | None:
        return None

    async def authorize_subscribe(
        self, session: SessionId, principal: Principal | None, event: Subscribe
    ) -> None:
        return None

    def subscribed(self, session: SessionId, principal: Principal | None, event: Subscribe) -> None:
        return None

    async def authorize_send(self, principal: Principal | None, event: Send) -> None:
        return None

    async def on_app_send(
        self, session: SessionId, principal: Principal | None, event: Send
    ) -> bool:
        return False


class CheckPasswords(AllowAll):
    """`AllowAll`, except that a CONNECT must carry a login and passcode that `users` knows
    (else ERROR "access refused", and the session closes); the session then acts for its login,
    so its `/user/...` destinations are its own."""

    def __init__(self, users: Users) -> None:
        self.users = users

    async def authenticate(
        self, event: Connect, transport: TransportInfo
    ) -> Principal | Authenticated | None:
        if not self.users.check(event.login, event.passcode):
            raise Refused(ACCESS_REFUSED, "wrong or missing login and passcode")
        return event.login
