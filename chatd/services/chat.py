"""The chat use-cases: init, send, history, unread, receipts, session lists.

One service object serves REST and STOMP alike, so both surfaces share every rule: the caller
is always the authenticated email (never a body field), the caller must be a participant of any
session it touches, and checks run in a fixed order — input shape (400), session exists (404),
caller participates (403), then the action. The one check that needs the session is a send's
`content` (text in a plain session, an envelope in an encrypted one): it comes after 403.
Storage is reached only through the `Store` protocol; time only through the injected clock,
so tests control both.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

import trio

from chatd.config import LimitsConfig
from chatd.domain.envelope import validate_envelope
from chatd.domain.errors import (
    BadRequest,
    ChatError,
    Forbidden,
    NotFound,
    RateLimited,
    Unavailable,
)
from chatd.domain.lru import Lru
from chatd.domain.models import (
    ChatSession,
    Message,
    Participant,
    ReceiptStatus,
    ReceiptUpdate,
    SessionSummary,
)
from chatd.domain.rules import (
    SendRateLimiter,
    parse_history_limit,
    require_email,
    validate_client_message_id,
    validate_content,
)
from chatd.observability.tracing import Tracer
from chatd.profiles.base import Profile, ProfileProvider
from chatd.redis_tier import SharedRateLimiter
from chatd.services.committer import SendCommitter
from chatd.services.inputs import (
    parse_batch,
    parse_flag,
    parse_receipt_selection,
    parse_seq,
    parse_session_id,
    validate_intent,
)
from chatd.storage.base import (
    REUSED_ELSEWHERE,
    Appended,
    AppendResult,
    NewMessage,
    Store,
    Withheld,
    refusal,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: Told a submitted send's outcome: (message, created), or (the error, False).
SendCallback = Callable[["Message | ChatError", bool], None]
#: Told a submitted batch send's outcome: (message, created) per item, or the error.
BatchCallback = Callable[["list[tuple[Message, bool]] | ChatError"], None]
SendPath = Literal["rest", "stomp"]


def utc_now() -> datetime:
    """The default clock: the wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


class SendObserver(Protocol):
    """Told about sends as they happen (metrics); must not block."""

    def message_sent(self, path: str, seconds: float) -> None:
        """A new message was stored through `path` in `seconds` (repeats are not told)."""

    def send_refused(self, path: str) -> None:
        """A send through `path` was refused by a rate limit."""


#: Sessions kept in memory for participant checks (they never change once created).
SESSION_CACHE_SIZE = 10_000


class ChatService:
    """Every chat use-case, for one store, profile source and rate limiter.

    Methods take the caller's email (from the verified token) first and raise `ChatError`
    subclasses only: `BadRequest`, `Forbidden`, `NotFound`, `PayloadTooLarge`, `RateLimited`,
    and `Unavailable` when the store or the profile source is down.
    """

    def __init__(
        self,
        store: Store,
        profiles: ProfileProvider,
        limiter: SendRateLimiter | None = None,
        *,
        limits: LimitsConfig | None = None,
        clock: Clock = utc_now,
        observer: SendObserver | None = None,
        committer: SendCommitter | None = None,
        shared_limiter: SharedRateLimiter | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """With a `committer`, sends are stored in its batches (and delivered right after);
        without, each in a transaction of its own. With a `shared_limiter` (the Redis tier,
        wrapping `limiter`) the rate limits hold across instances."""
        self.store = store
        self.committer = committer
        self.observer = observer
        self.profiles = profiles
        self.limits = limits or LimitsConfig()
        self.limiter = limiter or SendRateLimiter.from_limits(self.limits)
        self.shared_limiter = shared_limiter
        self.clock = clock
        #: When tracing is on: a send keeps the current span (its REST request or STOMP
        #: frame) as its trace context, which its commit and deliveries continue.
        self.tracer = tracer
        # A session never changes once created (participants, intent), so a found one can be
        # kept: every send and read checks participation, and this saves a store hop each time.
        self._sessions: Lru[uuid.UUID, ChatSession] = Lru(SESSION_CACHE_SIZE)

    # -- sessions ---------------------------------------------------------------------------

    async def init_session(
        self,
        caller: str,
        to_email: object,
        intent: object,
        from_email: object = None,
        encrypted: object = None,
    ) -> ChatSession:
        """The session of the caller and `to_email` in `intent`, created if new; with
        `encrypted` true, the pair's end-to-end encrypted session of that intent (another
        session than the plain one, taking only envelopes).

        Either side initiating finds the same session. Raises `BadRequest` for a malformed
        email, intent or flag or a chat with oneself, `Forbidden` when `from_email` is given
        and is not the caller, `NotFound` when a profile does not exist.
        """
        peer = require_email(to_email, "toEmail")
        intent = validate_intent(intent)
        wants_encrypted = parse_flag(encrypted, "encrypted")
        if from_email is not None and require_email(from_email, "fromEmail") != caller:
            raise Forbidden("fromEmail must be the authenticated user")
        if peer == caller:
            raise BadRequest("cannot open a chat with yourself")
        mine, theirs = await self._profiles_of(caller, peer, intent)
        return await self.store.get_or_create_session(
            intent,
            Participant(mine.id, caller, mine.display_name),
            Participant(theirs.id, peer, theirs.display_name),
            now=self.clock(),
            encrypted=wants_encrypted,
        )

    async def _profiles_of(self, caller: str, peer: str, intent: str) -> tuple[Profile, Profile]:
        """Both profiles, looked up at once: two calls to the profile service cost one round
        trip. When a look-up fails, the other is cancelled and its error (the first, if both
        failed) is raised as it is: NotFound, Unavailable."""
        found: dict[str, Profile] = {}

        async def look_up(email: str) -> None:
            found[email] = await self.profiles.lookup(email, intent)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(look_up, caller)
                nursery.start_soon(look_up, peer)
        except ExceptionGroup as group:  # only errors: cancellation from outside passes on
            error: BaseException = group
            while isinstance(error, BaseExceptionGroup):
                error = error.exceptions[0]
            raise error from None
        return found[caller], found[peer]

    async def require_participant(self, caller: str, session_id: object) -> ChatSession:
        """The session if the caller takes part in it.

        The gate of every session-scoped read and write, also for STOMP subscriptions.
        Raises `BadRequest` (not a UUID), `NotFound` (no such session), `Forbidden`.
        """
        sid = parse_session_id(session_id)
        session = self._sessions.get(sid)
        if session is None:
            session = await self.store.get_session(sid)
            if session is None:
                raise NotFound(f"session {sid} not found")
            self._sessions.put(sid, session)
        if not session.is_participant(caller):
            raise Forbidden("not a participant of this session")
        return session

    async def sessions(
        self, caller: str, *, limit: object = None, cursor: object = None
    ) -> list[SessionSummary]:
        """The caller's sessions, most recently active first, with last message and unread
        count; pass the last entry's `cursor` back for the next page."""
        size = self.page_size(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise BadRequest("cursor must be a string")
        return await self.store.sessions_for(caller, limit=size, cursor=cursor or None)

    # -- messages ---------------------------------------------------------------------------

    async def send(
        self,
        caller: str,
        session_id: object,
        content: object,
        client_message_id: object,
        *,
        path: SendPath = "rest",
        received_at: float | None = None,
    ) -> tuple[Message, bool]:
        """Store a message from the caller; return (message, created).

        `received_at` (trio time; default now) is when the send arrived: with a committer,
        one that would not be stored within ``[limits] max_send_wait_ms`` of it is refused
        at once (Unavailable, busy), before any check (`SendCommitter.admit`).

        A `client_message_id` the caller already used in this session returns the original
        with created False — before the rate limit, so a client retrying after a lost answer
        is never refused. Used in another session it is a `BadRequest`. Raises
        `PayloadTooLarge` for too long a text and `RateLimited` (with `retry_after`).
        """
        started = time.perf_counter()
        self._admit(received_at)
        prepared = await self._prepare(caller, session_id, content, client_message_id, path)
        if isinstance(prepared, Message):
            return prepared, False
        if self.committer is not None:
            appended = await self.committer.append(prepared)
        else:
            [result] = await self.store.append_messages([prepared])
            if isinstance(result, ChatError):
                raise result
            appended = result
        return self._stored(caller, prepared, appended.message, appended.created, path, started)

    async def submit(
        self,
        caller: str,
        session_id: object,
        content: object,
        client_message_id: object,
        on_done: SendCallback,
        *,
        path: SendPath = "stomp",
        received_at: float | None = None,
    ) -> None:
        """`send` without waiting for the commit: return once the message is queued (or
        answered), and call `on_done(message, created)` — or `on_done(error, False)` — when
        its batch committed. Messages submitted one after the other are stored in that
        order. Raises what `send` raises before storing (invalid input, rate limit, 404,
        403); with no committer, waits for the store like `send`.

        Why: a STOMP connection's next frame waits for this call, so waiting for the commit
        capped a pipelining client at one message per batch; `on_done` is called in the
        committer's task and must not block.
        """
        started = time.perf_counter()
        self._admit(received_at)
        prepared = await self._prepare(caller, session_id, content, client_message_id, path)
        if isinstance(prepared, Message):
            on_done(prepared, False)
            return

        def stored(result: AppendResult) -> None:
            if isinstance(result, ChatError):
                on_done(result, False)
                return
            try:
                message, created = self._stored(
                    caller, prepared, result.message, result.created, path, started
                )
            except ChatError as exc:
                on_done(exc, False)
                return
            on_done(message, created)

        if self.committer is not None:
            self.committer.submit(prepared, stored)
        else:
            [result] = await self.store.append_messages([prepared])
            stored(result)

    async def _prepare(
        self,
        caller: str,
        session_id: object,
        content: object,
        client_message_id: object,
        path: SendPath,
    ) -> NewMessage | Message:
        """The checks before storing: the message to store, or the original when a
        rate-limited send turns out to repeat a stored one (see `send`)."""
        sid = parse_session_id(session_id)
        cmid = validate_client_message_id(client_message_id)
        if not isinstance(content, str):
            raise BadRequest("content must be a string")
        session = await self.require_participant(caller, sid)
        text = self._content_rule(session)(content)
        now = self.clock()
        try:
            await self._charge(caller, (text,), now)
        except RateLimited:
            original = await self.store.find_message(caller, cmid)
            if original is None:
                self._refused(path)
                raise
            return self._repeat(original, sid)
        sender, trace = self._author(session, caller)
        return NewMessage(sid, sender, text, cmid, now, trace)

    def _author(self, session: ChatSession, caller: str) -> tuple[Participant, str | None]:
        """The caller as the session's sender (`require_participant` checked it) and the
        trace the send continues (one request, one trace: a batch's messages share it)."""
        sender = session.participant(caller)
        assert sender is not None
        return sender, None if self.tracer is None else self.tracer.current()

    def _content_rule(self, session: ChatSession) -> Callable[[object], str]:
        """What `content` may be depends on the session: an envelope (whose ciphertext the
        size limit applies to) in an encrypted one, text in a plain one."""
        if session.encrypted:
            return functools.partial(validate_envelope, limits=self.limits)
        return functools.partial(validate_content, limits=self.limits)

    def _admit(self, received_at: float | None, messages: object = None) -> None:
        """Refuse at once a send the committer could not store in time (see `send`); a
        batch send's `messages` (unchecked yet) count as many, whatever they hold."""
        if self.committer is not None:
            start = trio.current_time() if received_at is None else received_at
            count = len(messages) if isinstance(messages, list) else 1
            self.committer.admit(start + self.limits.max_send_wait_ms / 1000, count)

    def _stored(
        self,
        caller: str,
        item: NewMessage,
        message: Message,
        created: bool,
        path: SendPath,
        started: float,
    ) -> tuple[Message, bool]:
        """After the store: a repeat is answered with the original and not counted."""
        if not created:
            self._refund(caller, item.content)
            return self._repeat(message, item.session_id), False
        log.debug("message stored session=%s seq=%d via %s", item.session_id, message.seq, path)
        if self.observer is not None:
            self.observer.message_sent(path, time.perf_counter() - started)
        return message, True

    @staticmethod
    def _repeat(original: Message, session_id: uuid.UUID) -> Message:
        if original.session_id != session_id:
            raise BadRequest(REUSED_ELSEWHERE)
        return original

    # -- batch sends ------------------------------------------------------------------------

    async def send_batch(
        self,
        caller: str,
        session_id: object,
        messages: object,
        *,
        path: SendPath = "rest",
        received_at: float | None = None,
    ) -> list[tuple[Message, bool]]:
        """Store `messages` (``[{content, clientMessageId}, ...]``) from the caller in one
        transaction, with consecutive seqs in array order; (message, created) per item.

        All or nothing: a bad item is a `BadRequest` naming its index
        (`inputs.parse_batch`), and so is a clientMessageId the caller used in another
        session; then nothing is stored. Known clientMessageIds answer their originals
        (created False) like `send`. The rate limit charges every new item and refuses the
        whole batch (`RateLimited`) when they do not all fit; `Unavailable` as `send`.
        """
        started = time.perf_counter()
        self._admit(received_at, messages)
        items, charged = await self._prepare_batch(caller, session_id, messages, path)
        if self.committer is not None:
            results = await self.committer.append_batch(items)
        else:
            results = await self.store.append_messages(items, units=[len(items)])
        return self._stored_batch(caller, items, charged, results, path, started)

    async def submit_batch(
        self,
        caller: str,
        session_id: object,
        messages: object,
        on_done: BatchCallback,
        *,
        path: SendPath = "stomp",
        received_at: float | None = None,
    ) -> None:
        """`send_batch` without waiting for the commit, as `submit` is to `send`: raises
        what it raises before storing, then calls `on_done` with the answers or the error
        from the committer's task."""
        started = time.perf_counter()
        self._admit(received_at, messages)
        items, charged = await self._prepare_batch(caller, session_id, messages, path)

        def stored(results: list[AppendResult]) -> None:
            try:
                answers = self._stored_batch(caller, items, charged, results, path, started)
            except ChatError as exc:
                on_done(exc)
                return
            on_done(answers)

        if self.committer is not None:
            self.committer.submit_batch(items, stored)
        else:
            stored(await self.store.append_messages(items, units=[len(items)]))

    async def _charge(self, caller: str, texts: Sequence[str], now: datetime) -> None:
        """Charge the rate limit for `texts` (one send each), all or none: across instances
        with the Redis tier, else here. Raises RateLimited."""
        if self.shared_limiter is not None:
            await self.shared_limiter.check_many(caller, texts, now.timestamp())
        else:
            self.limiter.check_many(caller, texts, now.timestamp())

    def _refund(self, caller: str, text: str) -> None:
        """Undo one charge of `_charge` (a repeat, or a batch stored none of): where it was
        charged, so a Redis lease gets its token back too."""
        (self.shared_limiter or self.limiter).refund(caller, text)

    async def _prepare_batch(
        self, caller: str, session_id: object, messages: object, path: SendPath
    ) -> tuple[list[NewMessage], set[int]]:
        """The checks before storing: the items, and the indexes the rate limit charged
        (every one, or when that was refused, those not already stored)."""
        sid = parse_session_id(session_id)
        session = await self.require_participant(caller, sid)
        pairs = parse_batch(
            messages, max_batch=self.limits.max_batch, validate=self._content_rule(session)
        )
        now = self.clock()
        charged = set(range(len(pairs)))
        try:
            await self._charge(caller, [text for _, text in pairs], now)
        except RateLimited:
            # a client retrying a batch whose answer it lost is not refused for its repeats
            known = {
                m.client_message_id
                for m in await self.store.find_messages(caller, [c for c, _ in pairs])
            }
            charged = {i for i, (cmid, _) in enumerate(pairs) if cmid not in known}
            if len(charged) == len(pairs):
                self._refused(path)
                raise
            try:
                await self._charge(caller, [pairs[i][1] for i in sorted(charged)], now)
            except RateLimited:
                self._refused(path)
                raise
        sender, trace = self._author(session, caller)
        return [NewMessage(sid, sender, text, cmid, now, trace) for cmid, text in pairs], charged

    def _refused(self, path: SendPath) -> None:
        if self.observer is not None:
            self.observer.send_refused(path)

    def _stored_batch(
        self,
        caller: str,
        items: list[NewMessage],
        charged: set[int],
        results: list[AppendResult],
        path: SendPath,
        started: float,
    ) -> list[tuple[Message, bool]]:
        """After the store: the answers, or the error that refused the whole batch."""
        for index, result in enumerate(results):
            if isinstance(result, Unavailable):  # every item's: busy, late or store down
                raise result
            if isinstance(result, Withheld):
                continue
            problem = refusal(items[index], result)
            if problem is not None:  # nothing of the batch was stored: none counts
                for i in charged:
                    self._refund(caller, items[i].content)
                raise _at_index(index, problem)
        answers: list[tuple[Message, bool]] = []
        elapsed = time.perf_counter() - started
        for index, result in enumerate(results):
            assert isinstance(result, Appended)
            if not result.created and index in charged:
                self._refund(caller, items[index].content)
            elif result.created and self.observer is not None:
                self.observer.message_sent(path, elapsed)
            answers.append((result.message, result.created))
        log.debug("batch of %d stored session=%s via %s", len(items), items[0].session_id, path)
        return answers

    async def history(
        self,
        caller: str,
        session_id: object,
        *,
        limit: object = None,
        before: object = None,
        after: object = None,
    ) -> list[Message]:
        """A page of the session's messages, newest first.

        `before=N`: seq < N; `after=N`: the `limit` messages right after N; both: the range.
        """
        size = self.page_size(limit)
        lo, hi = parse_seq(after, "after"), parse_seq(before, "before")
        session = await self.require_participant(caller, session_id)
        return await self.store.history(session.id, limit=size, before=hi, after=lo)

    async def replay(
        self, caller: str, session_id: object, after_seq: int, *, limit: int
    ) -> list[Message]:
        """Oldest first: up to `limit` messages with seq > `after_seq` (STOMP x-since-seq)."""
        session = await self.require_participant(caller, session_id)
        return await self.store.messages_after(session.id, after_seq, limit)

    def page_size(self, limit: object) -> int:
        """The page size a `limit` value asks for (default, clamped to the maximum)."""
        return parse_history_limit(
            limit, default=self.limits.history_default, maximum=self.limits.history_max
        )

    # -- unread and receipts ----------------------------------------------------------------

    async def unread(
        self, caller: str, session_id: object, *, limit: object = None
    ) -> list[Message]:
        """Oldest first: the messages of others the caller has not seen (all, or `limit`)."""
        size = None if limit is None or limit == "" else self.page_size(limit)
        session = await self.require_participant(caller, session_id)
        return await self.store.unread(session.id, caller, limit=size)

    async def unread_count(self, caller: str, session_id: object) -> int:
        """How many messages `unread` would return."""
        session = await self.require_participant(caller, session_id)
        return await self.store.unread_count(session.id, caller)

    async def unread_totals(self, caller: str) -> list[tuple[uuid.UUID, int]]:
        """(session id, count) for each of the caller's sessions with unread messages."""
        return await self.store.unread_totals(caller)

    async def mark(
        self,
        caller: str,
        session_id: object,
        status: ReceiptStatus,
        *,
        up_to_seq: object = None,
        message_ids: object = None,
    ) -> ReceiptUpdate:
        """Mark others' messages (seq <= `up_to_seq`, or the listed ids) delivered or seen.

        Seen implies delivered; flags never go back, so repeating a call changes nothing
        (`updated` 0). Only the reader's own call sets them — nothing is marked on its behalf.
        """
        seq, ids = parse_receipt_selection(up_to_seq, message_ids)
        session = await self.require_participant(caller, session_id)
        return await self.store.mark(
            session.id, caller, status, up_to_seq=seq, message_ids=ids, at=self.clock()
        )


def _at_index(index: int, error: ChatError) -> ChatError:
    """`error` naming the batch item it is about (the wire's ``messages[i]``)."""
    if isinstance(error, BadRequest | Forbidden | NotFound):
        return type(error)(f"messages[{index}]: {error.message}")
    return error
