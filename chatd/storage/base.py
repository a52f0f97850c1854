"""The `Store` protocol every backend implements, plus the rules both backends share.

Services talk to storage only through `Store`. Every method is a trio coroutine that does its
work in ONE worker-thread hop per transaction (the database drivers are synchronous), and maps
"the database is not reachable" to `Unavailable("store unavailable")`.

Outbox format (docs/architecture.md, Storage and the outbox): each row has an ``event``
column — the STOMP ``event`` header, ``"message"`` or ``"receipt"`` — and a ``payload`` column
holding exactly the JSON body to publish (the message JSON, `Message.to_json`, or
``{sessionId, readerEmail, status, upToSeq, at}``). Which rows an event makes, and their
destinations, is decided in `chatd.domain.destinations`; the backends only save them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, Protocol, Self

from chatd.domain.errors import BadRequest, ChatError, Conflict, Unavailable
from chatd.domain.models import (
    ChatSession,
    Message,
    OutboxRow,
    Participant,
    PublicKey,
    ReceiptStatus,
    ReceiptUpdate,
    SessionSummary,
    compact_json,
)

DEFAULT_POOL_SIZE = 10
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_POOL_TIMEOUT = 10.0
DEFAULT_STATEMENT_TIMEOUT = 30.0
OUTBOX_CHANNEL = "chatd_outbox"
MAX_ERROR_TEXT = 2000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


OpenFailure = Literal["unreachable", "login", "no-database", "file"]


class OpenError(Unavailable):
    """`open()` failed. `cause` is why, as the server or the OS put it; `reason` the kind of
    failure, from which start-up names the setting to fix: ``unreachable`` (down, starting,
    full: waiting may help), ``login`` (user or password refused), ``no-database``, ``file``
    (the SQLite file or its folder cannot be created or opened)."""

    def __init__(self, cause: str, *, reason: OpenFailure) -> None:
        super().__init__("store unavailable")
        self.cause = cause
        self.reason: OpenFailure = reason

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed."""
        return self.reason == "unreachable"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message to store: what `Store.append_messages` takes per send."""

    session_id: uuid.UUID
    sender: Participant
    content: str
    client_message_id: str
    sent_at: datetime
    #: The send's W3C traceparent, kept in its outbox rows (None when tracing is off).
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """What storing one `NewMessage` did: the message (the original for a repeated client
    message id, `created` False) and, for a new one, its outbox rows in id order."""

    message: Message
    created: bool
    outbox: tuple[OutboxRow, ...] = ()


AppendResult = Appended | ChatError

REUSED_ELSEWHERE: Final = "clientMessageId was already used in another session"


class Withheld(ChatError):
    """Not stored because another message of its unit was refused (`Store.append_messages`:
    a unit is stored all or nothing). The caller reports the refused one, never this."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self) -> None:
        super().__init__("not stored: another message of its batch was refused")


def unit_spans(units: Sequence[int], size: int) -> list[range]:
    """The index ranges of `units` (sizes of consecutive groups of a batch of `size`); no
    units means each message alone. Raises ValueError when they do not tile the batch."""
    if not units:
        return [range(i, i + 1) for i in range(size)]
    if any(n < 1 for n in units) or sum(units) != size:
        raise ValueError(f"units {list(units)} do not split a batch of {size}")
    spans, start = [], 0
    for n in units:
        spans.append(range(start, start + n))
        start += n
    return spans


def refusal(item: NewMessage, result: AppendResult | None) -> ChatError | None:
    """Why `result` refuses `item`'s unit, or None: the error it got, or a repeat of a
    message the sender stored in another session (a client id names one message only)."""
    if isinstance(result, ChatError):
        return result
    if (
        isinstance(result, Appended)
        and not result.created
        and result.message.session_id != item.session_id
    ):
        return BadRequest(REUSED_ELSEWHERE)
    return None


def withhold_refused(
    batch: Sequence[NewMessage], results: list[AppendResult | None], span: range
) -> bool:
    """If a message of the unit `span` is refused (`refusal`), turn every result of the unit
    that is pending (None) or new into `Withheld`; True when it did (then nothing of the
    unit may be written)."""
    if not any(refusal(batch[i], results[i]) for i in span if results[i] is not None):
        return False
    for i in span:
        result = results[i]
        if result is None or (isinstance(result, Appended) and result.created):
            results[i] = Withheld()
    return True


async def append_one(
    store: Store,
    session_id: uuid.UUID,
    sender: Participant,
    content: str,
    client_message_id: str,
    sent_at: datetime,
) -> tuple[Message, bool]:
    """Store one message (`Store.append_messages` with a batch of one); (message, created).

    A `client_message_id` the sender already used returns (original, False) and writes
    nothing — even if the original belongs to another session (callers compare
    `session_id`). Raises NotFound for an unknown session, Forbidden when the sender is not
    a participant.
    """
    [result] = await store.append_messages(
        [NewMessage(session_id, sender, content, client_message_id, sent_at)]
    )
    if isinstance(result, ChatError):
        raise result
    return result.message, result.created


def group_by_session(batch: Sequence[NewMessage]) -> dict[uuid.UUID, list[int]]:
    """Batch indexes per session, sessions in id order (the order their rows are locked in,
    so two batches never wait on each other in a cycle), indexes in batch order."""
    groups: dict[uuid.UUID, list[int]] = {}
    for index, item in enumerate(batch):
        groups.setdefault(item.session_id, []).append(index)
    return {sid: groups[sid] for sid in sorted(groups)}


def key_change(
    key: PublicKey, current: PublicKey | None, same_kid: PublicKey | None, count: int, max_keys: int
) -> tuple[PublicKey, bool] | None:
    """The rule of `Store.put_public_key`, shared by both backends: (current, False) when
    `key` is already current, None when it may be stored; raises `Conflict` otherwise."""
    if same_kid is not None:
        if not same_kid.current:
            raise Conflict(
                f"key {key.kid} was replaced before and cannot be current again: generate a new key"
            )
        if same_kid.signing != key.signing:
            raise Conflict("the signing key changes only with a new agreement key")
        return same_kid, False
    if count >= max_keys:
        raise Conflict(f"this user already published {count} keys, the limit")
    assert current is None or current.kid != key.kid
    return None


def require_aware(value: datetime, what: str = "timestamp") -> datetime:
    """Return `value` in UTC; raises ValueError when it is naive (its zone would be a guess)."""
    if value.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return value.astimezone(UTC)


def to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch: SQLite's timestamp representation."""
    return (require_aware(value) - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    """The inverse of `to_micros`, an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


def encode_cursor(activity: datetime, session_id: uuid.UUID) -> str:
    """An opaque `sessions_for` cursor: the sort key of the last entry returned."""
    return f"{to_micros(activity)}.{session_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Parse a `sessions_for` cursor; raises BadRequest on anything we did not produce."""
    try:
        micros, hex_id = cursor.split(".", 1)
        return from_micros(int(micros)), uuid.UUID(hex=hex_id)
    except (ValueError, OverflowError):
        raise BadRequest("invalid cursor") from None


def claimable(
    candidates: Sequence[tuple[int, uuid.UUID]], blockers: dict[uuid.UUID, int]
) -> list[int]:
    """Apply the per-session ordering rule to a claim.

    `candidates` are (row id, session) pairs this claimer could take, `blockers` the lowest id
    per session of an unprocessed, non-dead row it could NOT take (leased elsewhere, backing
    off, or locked by a concurrent claimer). A row is handed out only when no such row precedes
    it, so a session's rows are published strictly in order even with several publishers: each
    claim is a per-session prefix of what is left.
    """
    return sorted(i for i, s in candidates if i < blockers.get(s, i + 1))


SESSION_COLUMNS = (
    "id",
    "intent",
    "profile_lo",
    "email_lo",
    "name_lo",
    "profile_hi",
    "email_hi",
    "name_hi",
    "created_at",
    "next_seq",
    "encrypted",
)
MESSAGE_COLUMNS = (
    "id",
    "session_id",
    "seq",
    "sender_id",
    "sender_email",
    "sender_display_name",
    "content",
    "client_msg_id",
    "sent_at",
    "delivered",
    "seen",
    "delivered_at",
    "seen_at",
)
KEY_COLUMNS = ("email", "kid", "agreement_jwk", "signing_jwk", "created_at", "retired_at")
OUTBOX_COLUMNS = (
    "id",
    "message_id",
    "session_id",
    "seq",
    "event",
    "destination",
    "payload",
    "retry_count",
    "next_retry_at",
    "last_error",
    "created_at",
    "trace_context",
)


def columns(names: Sequence[str], alias: str = "") -> str:
    """A select list, optionally qualified with a table alias (for joins)."""
    return ", ".join(f"{alias}.{n}" if alias else n for n in names)


def _same(value: Any) -> Any:
    return value


Convert = Callable[[Any], Any]


def session_from_row(row: Sequence[Any], uid: Convert = _same, ts: Convert = _same) -> ChatSession:
    """Build a ChatSession from a `SESSION_COLUMNS` row; `uid`/`ts` adapt backend types."""
    lo = Participant(row[2], row[3], row[4])
    hi = Participant(row[5], row[6], row[7])
    return ChatSession(uid(row[0]), row[1], (lo, hi), ts(row[8]), int(row[9]) - 1, bool(row[10]))


def message_from_row(row: Sequence[Any], uid: Convert = _same, ts: Convert = _same) -> Message:
    """Build a Message from a `MESSAGE_COLUMNS` row; `uid`/`ts` adapt backend types."""
    return Message(
        uid(row[0]),
        uid(row[1]),
        int(row[2]),
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        ts(row[8]),
        bool(row[9]),
        bool(row[10]),
        None if row[11] is None else ts(row[11]),
        None if row[12] is None else ts(row[12]),
    )


def outbox_from_row(row: Sequence[Any], uid: Convert = _same, ts: Convert = _same) -> OutboxRow:
    """Build an OutboxRow from an `OUTBOX_COLUMNS` row; `uid`/`ts` adapt backend types."""
    payload = row[6] if isinstance(row[6], str) else compact_json(row[6])
    return OutboxRow(
        int(row[0]),
        None if row[1] is None else uid(row[1]),
        uid(row[2]),
        int(row[3]),
        row[4],
        row[5],
        payload,
        int(row[7]),
        ts(row[8]),
        row[9],
        ts(row[10]),
        row[11],
    )


def key_from_row(row: Sequence[Any], ts: Convert = _same) -> PublicKey:
    """Build a PublicKey from a `KEY_COLUMNS` row; `ts` adapts the backend's timestamps."""
    return PublicKey(
        row[0], row[1], row[2], row[3], ts(row[4]), None if row[5] is None else ts(row[5])
    )


def summary_from_row(
    row: Sequence[Any], uid: Convert = _same, ts: Convert = _same
) -> SessionSummary:
    """Split a session-list row: session columns, activity time, unread count, message columns
    (all None when the session has no message yet)."""
    n = len(SESSION_COLUMNS)
    session = session_from_row(row[:n], uid, ts)
    activity, unread, message = ts(row[n]), int(row[n + 1]), row[n + 2 :]
    last = None if message[0] is None else message_from_row(message, uid, ts)
    return SessionSummary(session, last, unread, encode_cursor(activity, session.id))


def check_history_args(limit: int, before: int | None, after: int | None) -> None:
    """Raise ValueError on arguments no caller should pass (services validate user input)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if (before is not None and before < 0) or (after is not None and after < 0):
        raise ValueError("seq cursors are never negative")


def check_mark_args(status: str, up_to_seq: int | None, message_ids: object) -> None:
    """Raise BadRequest for an unknown status or a receipt that names no messages."""
    if status not in ("delivered", "seen"):
        raise BadRequest(f"unknown receipt status {status!r}")
    if up_to_seq is None and not message_ids:
        raise BadRequest("give upToSeq or messageIds")
    if up_to_seq is not None and up_to_seq < 0:
        raise BadRequest("upToSeq must not be negative")


def receipt_update(
    session_id: uuid.UUID,
    reader_email: str,
    status: ReceiptStatus,
    *,
    listed_top: int | None,
    up_to_seq: int | None,
    last_seq: int,
    changed: int,
    at: datetime,
) -> ReceiptUpdate:
    """The receipt a `mark` publishes: it covers up to the highest listed message and
    `up_to_seq` (capped at the session's last seq, so a reader cannot claim the future)."""
    top = listed_top
    if up_to_seq is not None:
        top = max(top or 0, min(up_to_seq, last_seq))
    return ReceiptUpdate(session_id, reader_email, status, top, changed, at)


class Store(Protocol):
    """Chat persistence. All methods are trio coroutines; they raise `Unavailable` when the
    database cannot be reached and `NotFound` for an unknown session where noted."""

    backend: str

    async def open(self) -> None:
        """Connect (pool or connections); raises Unavailable when the database is unreachable."""
        ...

    async def aclose(self) -> None:
        """Release every connection; idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def migrate(self) -> list[str]:
        """Apply pending migrations; return the names applied (empty when already current)."""
        ...

    async def check_schema(self) -> None:
        """Return when the schema is current; raise `migrate.SchemaError` otherwise."""
        ...

    async def ping(self) -> None:
        """One round trip for readiness; raises Unavailable."""
        ...

    def pool_usage(self) -> tuple[int, int, int]:
        """(connections in use now, connections available in all, calls waiting for one),
        for the pool gauges; never blocks."""
        ...

    async def get_or_create_session(
        self,
        intent: str,
        a: Participant,
        b: Participant,
        *,
        now: datetime,
        encrypted: bool = False,
    ) -> ChatSession:
        """The session of this pair and intent, whichever side asks; created at `now` if new.

        The encrypted session of a pair and intent is another session than the plain one.
        Race-safe: concurrent creators all get the one row.
        """
        ...

    async def shares_session(self, a: str, b: str) -> bool:
        """True when users `a` and `b` take part in at least one session together."""
        ...

    async def put_public_key(self, key: PublicKey, *, max_keys: int) -> tuple[PublicKey, bool]:
        """Make `key` the owner's current key; return (the current key, changed).

        Publishing the current key again changes nothing (False). Otherwise the previous key
        is retired at `key.created_at` and the change is announced
        (`chatd.domain.destinations.key_outbox`) in the same
        transaction. Raises `Conflict` when the kid was published before and retired, when
        the same kid comes with another signing key, or when the owner already has
        `max_keys` keys. Concurrent publishers of one user are serialized.
        """
        ...

    async def public_key(self, email: str, kid: str | None = None) -> PublicKey | None:
        """The user's key `kid` (current or retired), or the current one when `kid` is None;
        None when there is none."""
        ...

    async def get_session(self, session_id: uuid.UUID) -> ChatSession | None:
        """The session, or None when it does not exist."""
        ...

    async def append_messages(
        self,
        batch: Sequence[NewMessage],
        *,
        units: Sequence[int] = (),
        lease_until: datetime | None = None,
        sent: Sequence[int] = (),
        now: datetime | None = None,
    ) -> list[AppendResult]:
        """Store a batch of messages in ONE transaction (group commit); one result per message,
        in order: `Appended`, or the `ChatError` that message alone got (NotFound, Forbidden)
        while the others were stored. Each message follows `append_one`'s rules; messages
        of one session get consecutive seqs in batch order, and a client message id repeated
        within the batch is a repeat of its first use.

        `units` (sizes of consecutive groups, summing to the batch size; empty: each message
        alone) makes each group all or nothing: when one of its messages is refused or
        repeats a message of another session (`refusal`), none of its new messages is
        stored and they get `Withheld` (a batch send is one unit). A unit's messages are
        consecutive in the batch, so a unit of one session gets consecutive seqs.

        With `lease_until`, the new outbox rows are written already leased to the caller until
        then and no publisher is woken: the caller delivers them itself and marks them sent
        (`sent`, in a later batch, or `mark_outbox_sent`); the publisher takes them only if
        the lease runs out. `sent` (with `now`) marks those outbox ids processed in the same
        transaction. Raises Unavailable when the store is down (nothing was stored).
        """
        ...

    async def find_message(self, sender_email: str, client_message_id: str) -> Message | None:
        """The message this sender stored under `client_message_id`, if any."""
        ...

    async def find_messages(
        self, sender_email: str, client_message_ids: Sequence[str]
    ) -> list[Message]:
        """The messages this sender stored under any of `client_message_ids` (one query: a
        rate-limited batch looks for its repeats at once), in no particular order."""
        ...

    async def history(
        self,
        session_id: uuid.UUID,
        *,
        limit: int,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Message]:
        """Newest first: the last `limit`; with `before`, those with seq < before; with `after`,
        the `limit` right after it (seq after+1 ...); both bounds combine as a range."""
        ...

    async def messages_after(self, session_id: uuid.UUID, seq: int, limit: int) -> list[Message]:
        """Oldest first: up to `limit` messages with seq > `seq` (gap replay)."""
        ...

    async def unread(
        self, session_id: uuid.UUID, reader_email: str, *, limit: int | None = None
    ) -> list[Message]:
        """Oldest first: messages not seen by the reader and not sent by the reader."""
        ...

    async def unread_count(self, session_id: uuid.UUID, reader_email: str) -> int:
        """How many messages `unread` would return."""
        ...

    async def unread_totals(self, reader_email: str) -> list[tuple[uuid.UUID, int]]:
        """(session id, unread count) for each of the reader's sessions with unread messages,
        most recently active first."""
        ...

    async def mark(
        self,
        session_id: uuid.UUID,
        reader_email: str,
        status: ReceiptStatus,
        *,
        up_to_seq: int | None = None,
        message_ids: Sequence[uuid.UUID] | None = None,
        at: datetime,
    ) -> ReceiptUpdate:
        """Mark messages not sent by the reader (seq <= up_to_seq, or listed) delivered or seen.

        Seen implies delivered; flags never go back and times are set once. When something
        changed, the receipt's outbox rows are written in the same transaction. Raises NotFound
        for an unknown session, BadRequest for an unknown status or no selection. Participation
        is the caller's check.
        """
        ...

    async def sessions_for(
        self, email: str, *, limit: int, cursor: str | None = None
    ) -> list[SessionSummary]:
        """The user's sessions, most recently active first, each with its last message and
        the user's unread count; pass the last entry's `cursor` to get the next page."""
        ...

    async def peers(
        self, email: str, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        """The other participants of the user's sessions (presence goes to them only), most
        recently active first, at most `limit`; with `among`, only those listed."""
        ...

    async def claim_outbox(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[OutboxRow]:
        """Lease up to `limit` due rows (id order) until now + lease_seconds.

        A row is handed out only when every earlier unprocessed, non-dead row of its session is
        in the same claim (see `claimable`), so a session is published in order.
        """
        ...

    async def release_outbox(self, ids: Sequence[int], *, now: datetime) -> None:
        """Give back leased rows that were not attempted, due again at `now`."""
        ...

    async def mark_outbox_sent(self, ids: Sequence[int], *, now: datetime) -> None:
        """Mark rows processed (published and accepted) at `now`."""
        ...

    async def mark_outbox_failed(
        self, row_id: int, *, error: str, next_retry_at: datetime, dead: bool
    ) -> None:
        """Record a failed attempt: count it, keep the error, retry at `next_retry_at` or give
        up (`dead`, never claimed again)."""
        ...

    async def outbox_stats(self) -> tuple[int, int]:
        """(pending, dead) row counts for metrics and logs."""
        ...

    async def purge_outbox(self, *, sent_before: datetime, limit: int) -> int:
        """Delete at most `limit` rows that were sent before `sent_before`; return how many.

        Sent rows are kept a while for operators (what went out, when), then only take space.
        Pending and dead rows are never purged: the first still have to go out, the second
        are for an operator to look at."""
        ...

    async def wait_for_outbox(self) -> None:
        """Return as soon as new outbox rows may exist (possibly spuriously).

        Meant for one publisher task, which bounds it with `trio.move_on_after(poll_interval)`
        and claims either way: the wake-up makes publishing prompt, the poll makes it certain.
        """
        ...


def open_store(url: str, **opts: Any) -> Store:
    """A not-yet-opened store for `url`: ``postgresql://...`` or ``sqlite:///path``.

    `opts` are `pool_size`, `connect_timeout`, `pool_timeout`, `statement_timeout` (seconds);
    both backends accept them. Raises ValueError for any other scheme.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from chatd.storage.postgres import PostgresStore

        return PostgresStore(url, **opts)
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        from chatd.storage.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], **opts)
    raise ValueError("database url must be postgresql://... or sqlite:///PATH")
