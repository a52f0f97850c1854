"""Every STOMP destination chatd uses, and which ones a stored event is published to.

Two kinds of destination:

* the **session topic** ``/topic/session.{id}``: a session's messages, receipts and typing
  events, in seq order; only its participants may subscribe (`chatd.realtime.hooks`).
* the **user queues**: a client subscribes to ``/user/queue/{name}``; the broker keys it as
  ``user:{email}:/queue/{name}`` (`stomp.broker.user_key`), so every connection of that user
  shares it and nobody else can reach it. `UserQueue` lists the names and what each carries.

The RabbitMQ bridge maps these keys to routing keys (`chatd.bridge.keys`); the outbox rows a
new message, receipt or key change makes are built here too (`message_outbox`,
`receipt_outbox`, `key_outbox`), so the storage backends only save them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from enum import StrEnum
from typing import Final

from chatd.domain.models import (
    EVENT_KEYS,
    EVENT_MESSAGE,
    EVENT_RECEIPT,
    ROWS_PER_MESSAGE,
    ChatSession,
    Message,
    OutboxEntry,
    PublicKey,
    ReceiptUpdate,
    compact_json,
)
from stomp.broker import QUEUE_PREFIX, USER_KEY_PREFIX, USER_PREFIX, user_key

SESSION_TOPIC_PREFIX: Final = "/topic/session."


class UserQueue(StrEnum):
    """The per-user queues a client may subscribe to, as ``/user/queue/{value}``."""

    #: Every new message of the user's sessions (for a chat list that is not subscribed to
    #: each session topic).
    MESSAGES = "messages"
    #: The answer to the user's own `/app` sends: the stored message with its clientMessageId.
    ACK = "ack"
    #: Refusals of the user's `/app` sends: `{clientMessageId, status, errorMsg[, retryAfter]}`.
    ERROR = "error"
    #: Delivered/seen receipts for messages the user sent.
    RECEIPTS = "receipts"
    #: Echo of `/app/chat.ping` bodies.
    PONG = "pong"
    #: Public-key changes of the users who share a session with the user, and the user's own
    #: (end-to-end encrypted chats): `{email, kid, previousKid, createdAt}`.
    KEYS = "keys"
    #: Peers coming online and going offline: `{event, email, online, lastSeen}`; a snapshot
    #: of every peer right after the SUBSCRIBE's RECEIPT (`chatd.presence`).
    PRESENCE = "presence"

    @property
    def path(self) -> str:
        """The queue's path below the user prefix, e.g. ``/queue/ack``."""
        return f"{QUEUE_PREFIX}{self.value}"

    @property
    def subscription(self) -> str:
        """What a client subscribes to, e.g. ``/user/queue/ack``."""
        return f"{USER_PREFIX}{QUEUE_PREFIX[1:]}{self.value}"


#: For refusals: what a client may subscribe to.
ALLOWED_SUBSCRIPTIONS: Final = (
    f"{SESSION_TOPIC_PREFIX}{{id}} and {USER_PREFIX}{QUEUE_PREFIX[1:]}"
    f"{{{','.join(q.value for q in UserQueue)}}}"
)
_BY_SUBSCRIPTION: Final = {q.subscription: q for q in UserQueue}


def session_topic(session_id: uuid.UUID) -> str:
    """The session topic every participant may subscribe to."""
    return f"{SESSION_TOPIC_PREFIX}{session_id}"


def is_session_topic(destination: str) -> bool:
    """Whether `destination` is spelled as a session topic (its id may still be malformed)."""
    return destination.startswith(SESSION_TOPIC_PREFIX)


def topic_session_id(destination: str) -> uuid.UUID:
    """The session id of a session topic; raises ValueError for anything else."""
    try:
        if is_session_topic(destination):
            return uuid.UUID(destination[len(SESSION_TOPIC_PREFIX) :])
    except ValueError:
        pass
    raise ValueError(f"not a session topic: {destination!r}")


def user_queue(email: str, queue: UserQueue) -> str:
    """The broker key addressing every connection of `email` subscribed to `queue`."""
    return user_key(email, queue.path)


def subscription_name(destination: str) -> str:
    """What a client subscribes to for the broker key `destination`, with nobody's email in
    it: a user key ``user:{email}:/queue/x`` is ``/user/queue/x``, anything else itself (trace
    span names and attributes; docs/security.md, What traces contain)."""
    if destination.startswith(USER_KEY_PREFIX):
        return USER_PREFIX[:-1] + destination.rpartition(":")[2]
    return destination


def subscribed_user_queue(destination: str) -> UserQueue | None:
    """The user queue a SUBSCRIBE `destination` names, None when it names none."""
    return _BY_SUBSCRIPTION.get(destination)


def message_outbox(
    session: ChatSession, message: Message, trace_context: str | None = None
) -> list[OutboxEntry]:
    """The rows a new message publishes: the session topic, then both users' message queues,
    each carrying the send's `trace_context` (its W3C traceparent, None when not traced)."""
    body = compact_json(message.to_json())
    destinations = [session_topic(session.id)] + [
        user_queue(email, UserQueue.MESSAGES) for email in session.emails
    ]
    assert len(destinations) == ROWS_PER_MESSAGE
    return [
        OutboxEntry(
            EVENT_MESSAGE, d, body, session.id, message.seq, message.message_id, trace_context
        )
        for d in destinations
    ]


def receipt_outbox(update: ReceiptUpdate, sender_emails: Iterable[str]) -> list[OutboxEntry]:
    """The rows a receipt publishes: the session topic, then the receipts queue of each
    sender whose messages it covers."""
    body = compact_json(update.event_json())
    seq = update.up_to_seq or 0
    destinations = [session_topic(update.session_id)] + [
        user_queue(email, UserQueue.RECEIPTS) for email in sorted(set(sender_emails))
    ]
    return [OutboxEntry(EVENT_RECEIPT, d, body, update.session_id, seq) for d in destinations]


def key_outbox(
    key: PublicKey, previous_kid: str | None, sessions: Iterable[tuple[str, uuid.UUID]]
) -> list[OutboxEntry]:
    """The rows announcing a new key on ``/user/queue/keys``: one for every peer the owner
    shares a session with, and one for the owner (their other connections), from
    `sessions` = (peer email, session id) of each of the owner's sessions.

    Each row is filed under one session the two share (the first given): the outbox needs a
    session, and the announcement is then ordered with that session's messages. An owner
    with no session has nobody to tell.
    """
    body = compact_json(key.event_json(previous_kid))
    first: dict[str, uuid.UUID] = {}
    for peer, session_id in sessions:
        first.setdefault(key.email, session_id)
        first.setdefault(peer, session_id)
    return [
        OutboxEntry(EVENT_KEYS, user_queue(email, UserQueue.KEYS), body, sid, 0)
        for email, sid in sorted(first.items())
    ]
