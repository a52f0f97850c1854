"""chatd's say in every STOMP session: who connects, what they may subscribe and send to.

Authentication: `Authorization: Bearer <jwt>` on CONNECT, else the token as
`passcode`, else `access_token` in the WebSocket handshake query (browsers cannot set
handshake headers). The STOMP principal is the token's email. Whatever is refused gets an
ERROR frame whose `message` names the reason and the destination, then the session closes.

Subscriptions: `/topic/session.{id}` for its participants (optionally replaying history, see
`chatd.realtime.replay`), and the caller's own
`/user/queue/{messages,ack,error,receipts,pong,presence,keys}` — the broker keys those by the
session's principal, so naming another user's queue is impossible, and `/user/{someone}/...`
spellings are refused outright. SEND: `/app/...` only, and outside STOMP transactions; a
client publishing to a topic or a user queue could impersonate the server.

Several instances (docs/architecture.md, Two instances): with a `Binder` (the RabbitMQ bridge)
set, an allowed SUBSCRIBE first waits until this instance receives the destination from
RabbitMQ, then replays; so the RECEIPT, written after the hook, means nothing published from
then on can be missed.

Presence: `/user/queue/presence` gets a snapshot of the caller's peers right after its RECEIPT
(computed in `authorize_subscribe`, written by `subscribed` before any live update can pass
it), then live updates (`chatd.presence`).
"""

from __future__ import annotations

import logging
import time
from typing import Final, Protocol

from chatd.auth.tokens import TokenVerifier, bearer_token
from chatd.config import Config
from chatd.domain.destinations import (
    ALLOWED_SUBSCRIPTIONS,
    UserQueue,
    is_session_topic,
    session_topic,
    subscribed_user_queue,
    topic_session_id,
    user_queue,
)
from chatd.domain.errors import ChatError, Unauthenticated, view
from chatd.domain.models import compact_json
from chatd.domain.presence import EVENT_PRESENCE
from chatd.domain.rules import max_body_size
from chatd.presence import PresenceService
from chatd.realtime.delivery import LocalDelivery, event_headers
from chatd.realtime.handlers import APP_PREFIX, AppHandlers
from chatd.realtime.replay import DEFAULT_MAX_REPLAY, replay, since_seq
from chatd.release import version
from chatd.services import ChatService
from stomp import Connect, Send, Subscribe
from stomp.broker import Broker, Limits, SessionId
from stomp.trio import Authenticated, BrokerRuntime, Principal, Refused, TransportInfo

log = logging.getLogger(__name__)

UNAUTHENTICATED: Final = "unauthenticated"
#: Bytes for an `/app` SEND's command and headers on top of its body.
FRAME_HEAD_ROOM: Final = 1024


class Binder(Protocol):
    """Makes this instance receive a destination from other instances (the RabbitMQ bridge)."""

    async def ensure_bound(self, destination: str) -> bool:
        """Wait until messages published to the broker key `destination` reach us; False
        when they may not yet (not connected, or the bind is slow). Every call is followed
        by one `release`, without a checkpoint in between on success."""
        ...

    def release(self, destination: str, *, subscribed: bool) -> None:
        """The SUBSCRIBE `ensure_bound` was for is decided: `subscribed` False (refused) lets
        the binding go unless another subscriber uses or awaits it."""
        ...


class ChatHooks:
    """`stomp.trio.Hooks` for chatd. Built after the runtime it publishes into (through
    `delivery` and `handlers`), then given to it: the one cycle of the wiring."""

    def __init__(
        self,
        services: ChatService,
        verifier: TokenVerifier,
        delivery: LocalDelivery,
        handlers: AppHandlers,
        *,
        max_replay: int = DEFAULT_MAX_REPLAY,
        close_on_expiry: bool = True,
        binder: Binder | None = None,
        presence: PresenceService | None = None,
    ) -> None:
        self.services = services
        self.verifier = verifier
        self.close_on_expiry = close_on_expiry
        self.delivery = delivery
        self.handlers = handlers
        self.max_replay = max_replay
        self.binder = binder
        self.presence = presence
        # (session, subscription id, bodies): the snapshot `subscribed` writes next; set after
        # the hook's last await, so nothing else can run before `subscribed` takes it.
        self._snapshot: tuple[SessionId, str, list[bytes]] | None = None

    @property
    def runtime(self) -> BrokerRuntime:
        return self.delivery.runtime

    async def authenticate(self, event: Connect, transport: TransportInfo) -> Authenticated:
        """The email of the CONNECT's token, and (with `close_on_expiry`) the seconds until
        the token stops being accepted, when the runtime closes the session with an ERROR;
        Refused("unauthenticated") for a missing, malformed, expired or foreign token. The
        first place a token is found is the one used: a bad header is not rescued by a good
        query parameter."""
        header = event.frame.get("Authorization") or event.frame.get("authorization")
        try:
            if header is not None:
                token = bearer_token(header)
            elif event.passcode:
                token = event.passcode
            else:
                token = next(iter(transport.query().get("access_token", [])), "")
            identity = await self.verifier.authenticate(token)
        except Unauthenticated as exc:
            raise Refused(UNAUTHENTICATED, exc.message) from None
        expires_in = None
        if self.close_on_expiry:
            # The same leeway that accepted the token decides when it stops being good.
            expires_in = identity.expires_at + self.verifier.leeway - time.time()
        return Authenticated(identity.email, expires_in)

    async def authorize_subscribe(
        self, session: SessionId, principal: Principal | None, event: Subscribe
    ) -> None:
        """Allow the caller's own user queues and the topics of its sessions (replaying
        `x-since-seq` history last, see `replay`); refuse anything else, naming it."""
        destination = event.destination
        caller = _require(principal)
        queue = subscribed_user_queue(destination)
        if queue is not None:
            if self.binder is not None:
                key = user_queue(caller, queue)
                await self.binder.ensure_bound(key)
                self.binder.release(key, subscribed=True)
            if queue is UserQueue.PRESENCE and self.presence is not None:
                peers = await self.presence.snapshot(caller)
                bodies = [compact_json(p.to_json()).encode() for p in peers]
                self._snapshot = (session, event.id, bodies)  # no await from here on
            return
        if not is_session_topic(destination):
            raise Refused(f"cannot subscribe to {destination}", f"allowed: {ALLOWED_SUBSCRIPTIONS}")
        try:
            sid = topic_session_id(destination)
        except ValueError:
            raise Refused(f"cannot subscribe to {destination}", "not a session id") from None
        try:
            chat = await self.services.require_participant(caller, sid)
        except ChatError as exc:
            raise Refused(f"cannot subscribe to {destination}", view(exc).message) from None
        if destination != session_topic(chat.id):
            # Another spelling of the id (upper case, braces) would be another broker topic
            # that nothing is ever published to.
            raise Refused(
                f"cannot subscribe to {destination}", f"use the canonical session id {chat.id}"
            )
        after = since_seq(event)
        if self.binder is not None and not await self.binder.ensure_bound(destination):
            # Before the replay reads its mark: what other instances publish until the bind
            # lands would pass us by, a gap behind the replay that x-since-seq then skips
            # (found by the soak after a restart's flood of binds). The client retries.
            self.binder.release(destination, subscribed=False)
            raise Refused(
                f"cannot subscribe to {destination}",
                "not yet receiving it from the other instances (RabbitMQ is "
                "unreachable or slow); subscribe again shortly",
            )
        try:
            if after is not None:
                await replay(
                    self.runtime,
                    self.delivery,
                    self.services,
                    session=session,
                    caller=caller,
                    chat=chat,
                    after=after,
                    event=event,
                    max_replay=self.max_replay,
                )
                # Nothing may await after the replay: the subscription activates on return.
        except BaseException:
            if self.binder is not None:
                self.binder.release(destination, subscribed=False)
            raise
        if self.binder is not None:
            self.binder.release(destination, subscribed=True)

    def subscribed(self, session: SessionId, principal: Principal | None, event: Subscribe) -> None:
        """Write the presence snapshot `authorize_subscribe` prepared, right after the
        RECEIPT and before any live update."""
        pending, self._snapshot = self._snapshot, None
        if pending is None or pending[:2] != (session, event.id):
            return
        headers = event_headers(EVENT_PRESENCE)
        for body in pending[2]:
            self.runtime.deliver(session, event.id, event.destination, body, headers)

    async def authorize_send(self, principal: Principal | None, event: Send) -> None:
        """Only the `/app/...` destinations chatd handles, outside transactions; refuse the
        rest, naming it.

        An `/app` SEND acts at once (stored, acknowledged, published): it cannot wait for a
        COMMIT or be undone by an ABORT, so a `transaction` header on it (a known transaction
        or not) is refused rather than silently ignored.
        """
        _require(principal)
        if not self.handlers.knows(event.destination):
            allowed = ", ".join(sorted(self.handlers.routes))
            raise Refused(f"cannot send to {event.destination}", f"allowed: {allowed}")
        if event.transaction is not None:
            raise Refused(
                f"cannot send to {event.destination} in a transaction",
                f"{APP_PREFIX}... destinations act at once and take no part in STOMP "
                "transactions: send without the transaction header",
            )

    async def on_app_send(
        self, session: SessionId, principal: Principal | None, event: Send
    ) -> bool:
        """Run the `/app` handler (which answers the receipt itself)."""
        if not event.destination.startswith(APP_PREFIX):
            return False
        await self.handlers.handle(session, _require(principal), event)
        return True


def _require(principal: Principal | None) -> str:
    # authenticate never lets an anonymous session through; this guards a future change.
    if principal is None:
        raise Refused(UNAUTHENTICATED, "no authenticated user")
    return principal


def build_runtime(config: Config) -> BrokerRuntime:
    """The broker runtime with `[limits]`/`[server]` STOMP settings. Its `ChatHooks` come
    once built (they publish into this runtime), see `chatd.supervisor.build_components`."""
    limits = config.limits
    broker = Broker(
        limits=Limits(max_subscriptions=limits.stomp_max_subscriptions),
        server_name=f"chatd/{version()}",
    )
    # A frame limit below what a message within `max_content_length` needs is raised to it:
    # a text REST accepts is accepted over STOMP too, however its JSON escapes it.
    frame_size = max(
        limits.stomp_max_frame_size, max_body_size(limits.max_content_length) + FRAME_HEAD_ROOM
    )
    return BrokerRuntime(
        broker,
        heartbeat=(config.server.heartbeat_send_ms, config.server.heartbeat_receive_ms),
        max_pending_frames=limits.stomp_max_pending_frames,
        max_frame_size=frame_size,
        max_body_size=frame_size,
        max_header_count=limits.stomp_max_headers,
    )
