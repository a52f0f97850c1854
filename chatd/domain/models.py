"""Domain models shared by storage, services and the realtime layer.

Pure values: frozen, slotted dataclasses with no I/O. The JSON shapes produced here are the wire
contract (REST answers and STOMP bodies, docs/architecture.md, Wire contracts), so the REST
handler, the STOMP ack and the outbox payload written by the store all serialize a message the
same way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

ReceiptStatus = Literal["delivered", "seen"]
RECEIPT_STATUSES: tuple[ReceiptStatus, ...] = ("delivered", "seen")

EVENT_MESSAGE = "message"
EVENT_RECEIPT = "receipt"
#: A user published a new public key (end-to-end encrypted chats, `PublicKey`).
EVENT_KEYS = "keys"
#: Outbox rows one new message writes (`chatd.domain.destinations.message_outbox`: the session
#: topic and both participants' queues); the send path's backlog bound counts in rows.
ROWS_PER_MESSAGE = 3


def compact_json(value: Any) -> str:
    """Compact JSON text with non-ASCII kept as is: what the outbox stores, STOMP and SockJS
    frames carry and REST answers, byte for byte the same everywhere."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def iso_utc(value: datetime) -> str:
    """Format an aware datetime as ISO-8601 UTC with microseconds, e.g. ``...T13:00:00.123456Z``.

    A fixed width (always six fraction digits) keeps the text sortable and easy to parse for
    clients; raises ValueError on a naive datetime, which would be ambiguous.
    """
    if value.tzinfo is None:
        raise ValueError("naive datetime: chatd timestamps are always timezone-aware UTC")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat (C) is several times faster than strftime; "+00:00" becomes "Z"
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


def _iso_or_none(value: datetime | None) -> str | None:
    return None if value is None else iso_utc(value)


@dataclass(frozen=True, slots=True)
class Participant:
    """One side of a session: the profile id for the session's intent, the identity, the name."""

    profile_id: str
    email: str
    display_name: str

    def to_json(self) -> dict[str, Any]:
        """The ``{profileId, email, displayName}`` object of the init answer."""
        return {"profileId": self.profile_id, "email": self.email, "displayName": self.display_name}


def canonical_pair(a: Participant, b: Participant) -> tuple[Participant, Participant]:
    """Return the two participants sorted by profile id (ties by email).

    Sessions store their participants in this order so the unique (lo, hi, intent) key finds
    the same session whichever side initiates.
    """
    return (a, b) if (a.profile_id, a.email) <= (b.profile_id, b.email) else (b, a)


@dataclass(frozen=True, slots=True)
class ChatSession:
    """A conversation between two participants in one intent.

    `participants` is in canonical order (see `canonical_pair`); `last_seq` is the seq of the
    newest message (0 when there is none yet). An `encrypted` session only takes end-to-end
    encrypted envelopes (`chatd.domain.envelope`); a pair has at most one plain and one
    encrypted session per intent.
    """

    id: uuid.UUID
    intent: str
    participants: tuple[Participant, Participant]
    created_at: datetime
    last_seq: int = 0
    encrypted: bool = False

    @property
    def emails(self) -> tuple[str, str]:
        """The two participant emails, in canonical order."""
        return (self.participants[0].email, self.participants[1].email)

    def participant(self, email: str) -> Participant | None:
        """The participant with this email, or None when `email` is not part of the session."""
        for p in self.participants:
            if p.email == email:
                return p
        return None

    def is_participant(self, email: str) -> bool:
        """True when `email` is one of the two participants."""
        return email in self.emails

    def to_json(self) -> dict[str, Any]:
        """The init answer: ``{sessionId, intent, participants, createdAt, encrypted}``."""
        return {
            "sessionId": str(self.id),
            "intent": self.intent,
            "participants": [p.to_json() for p in self.participants],
            "createdAt": iso_utc(self.created_at),
            "encrypted": self.encrypted,
        }


@dataclass(frozen=True, slots=True)
class Message:
    """A stored chat message; `seq` counts from 1 per session with no gaps."""

    message_id: uuid.UUID
    session_id: uuid.UUID
    seq: int
    sender_id: str
    sender_email: str
    sender_display_name: str
    content: str
    client_message_id: str
    sent_at: datetime
    delivered: bool = False
    seen: bool = False
    delivered_at: datetime | None = None
    seen_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The message JSON of REST and STOMP, keys in contract order."""
        return {
            "messageId": str(self.message_id),
            "sessionId": str(self.session_id),
            "seq": self.seq,
            "senderId": self.sender_id,
            "senderEmail": self.sender_email,
            "senderDisplayName": self.sender_display_name,
            "content": self.content,
            "clientMessageId": self.client_message_id,
            "sentAt": iso_utc(self.sent_at),
            "delivered": self.delivered,
            "seen": self.seen,
            "deliveredAt": _iso_or_none(self.delivered_at),
            "seenAt": _iso_or_none(self.seen_at),
        }


def batch_answers_json(answers: Sequence[tuple[Message, bool]]) -> list[dict[str, Any]]:
    """A batch send's answers, in its order: ``{status, message}`` per item, status 201 for a
    new message and 200 for the original of a known clientMessageId (REST and STOMP alike)."""
    return [
        {"status": 201 if created else 200, "message": message.to_json()}
        for message, created in answers
    ]


@dataclass(frozen=True, slots=True)
class ReceiptUpdate:
    """The result of marking messages delivered or seen.

    `up_to_seq` is the effective high-water mark (the highest seq the request covered, clamped
    to the session's last message; None when message ids matched nothing); `updated` is how many
    rows actually changed, so 0 means nothing was published.
    """

    session_id: uuid.UUID
    reader_email: str
    status: ReceiptStatus
    up_to_seq: int | None
    updated: int
    at: datetime

    def to_json(self) -> dict[str, Any]:
        """The REST answer ``{sessionId, status, upToSeq, updated}``."""
        return {
            "sessionId": str(self.session_id),
            "status": self.status,
            "upToSeq": self.up_to_seq,
            "updated": self.updated,
        }

    def event_json(self) -> dict[str, Any]:
        """The STOMP ``receipt`` event body ``{sessionId, readerEmail, status, upToSeq, at}``."""
        return {
            "sessionId": str(self.session_id),
            "readerEmail": self.reader_email,
            "status": self.status,
            "upToSeq": self.up_to_seq,
            "at": iso_utc(self.at),
        }


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A user's published public keys (one publication): the ECDH P-256 `agreement` JWK and
    the optional ECDSA P-256 `signing` JWK, as canonical JWK text. `kid` is the agreement
    key's RFC 7638 thumbprint; `retired_at` is set once a newer publication replaced it
    (retired keys stay readable: old messages name them)."""

    email: str
    kid: str
    agreement: str
    signing: str | None
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def current(self) -> bool:
        """True while no newer key replaced this one."""
        return self.retired_at is None

    def to_json(self) -> dict[str, Any]:
        """``{email, kid, agreementKey, signingKey, createdAt, retiredAt, current}``."""
        return {
            "email": self.email,
            "kid": self.kid,
            "agreementKey": json.loads(self.agreement),
            "signingKey": None if self.signing is None else json.loads(self.signing),
            "createdAt": iso_utc(self.created_at),
            "retiredAt": _iso_or_none(self.retired_at),
            "current": self.current,
        }

    def event_json(self, previous_kid: str | None) -> dict[str, Any]:
        """The ``keys`` event body on ``/user/queue/keys``: who, which key, which it replaced."""
        return {
            "email": self.email,
            "kid": self.kid,
            "previousKid": previous_kid,
            "createdAt": iso_utc(self.created_at),
        }


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An outbox row to be written: `event` is the STOMP ``event`` header, `payload` the body.

    `destination` is either a broker destination (``/topic/session.{id}``) or a user destination
    ``user:{email}:/queue/...`` that the publisher resolves to every connection of that user.
    """

    event: str
    destination: str
    payload: str
    session_id: uuid.UUID
    seq: int
    message_id: uuid.UUID | None = None
    #: The W3C traceparent of the send that made the row (None when tracing is off).
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored outbox row as handed to the publisher by `Store.claim_outbox`."""

    id: int
    message_id: uuid.UUID | None
    session_id: uuid.UUID
    seq: int
    event: str
    destination: str
    payload: str
    retry_count: int
    next_retry_at: datetime
    last_error: str | None
    created_at: datetime
    #: The W3C traceparent its delivery continues (chatd.observability.tracing), or None.
    trace_context: str | None = None

    def with_trace_context(self, trace_context: str) -> OutboxRow:
        """This row with another trace context (what `dataclasses.replace` does, at a tenth
        of its cost: a publish round re-points every row it traces)."""
        return OutboxRow(
            self.id,
            self.message_id,
            self.session_id,
            self.seq,
            self.event,
            self.destination,
            self.payload,
            self.retry_count,
            self.next_retry_at,
            self.last_error,
            self.created_at,
            trace_context,
        )


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One entry of a user's session list: the session, its newest message, the unread count.

    `cursor` is opaque; pass it back to `Store.sessions_for` to get the entries after this one.
    """

    session: ChatSession
    last_message: Message | None
    unread: int
    cursor: str
