"""PostgreSQL backend: psycopg 3 (sync) with psycopg_pool, driven from trio worker threads.

psycopg's async API only runs on asyncio, so every transaction is one `trio.to_thread` hop that
checks a connection out of a `ConnectionPool`, with a `CapacityLimiter` of
`THREADS_PER_CONNECTION` threads per connection (see there why more than one). A cancelled call
abandons its thread and asks the server to cancel the running query (`cancel_safe`), so
cancellation stays prompt.
LISTEN runs on its own connection and waits with `trio.lowlevel.wait_readable`: no thread.

This is the only module that imports psycopg.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from chatd.domain.destinations import key_outbox, message_outbox, receipt_outbox
from chatd.domain.errors import ChatError, Forbidden, NotFound, Unavailable
from chatd.domain.models import (
    ChatSession,
    Message,
    OutboxEntry,
    OutboxRow,
    Participant,
    PublicKey,
    ReceiptStatus,
    ReceiptUpdate,
    SessionSummary,
    canonical_pair,
)
from chatd.storage import base
from chatd.storage import postgres_sql as queries
from chatd.storage.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
    OUTBOX_CHANNEL,
    Appended,
    AppendResult,
    NewMessage,
    OpenError,
)
from chatd.storage.migrate import Migration, apply_migrations, check_current

T = TypeVar("T")
Conn = psycopg.Connection[Any]
_MIGRATION_LOCK = 0x63686174  # "chat": serializes concurrent `chatd migrate` runs
_KEYS_LOCK = 0x6B657973  # "keys", with the owner's hash: one key publisher per user at a time
_LISTEN_RETRY = 1.0
_FRESH = 2.0  # seconds a connection stays trusted after its last use (see `_check_if_idle`)
_DOWN = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class _Active:
    """The connection a worker thread is using, so a cancelled caller can cancel its query.

    The lock makes sure a cancel never reaches a connection already handed back to the pool
    (and possibly running someone else's query).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Conn | None = None

    @contextmanager
    def hold(self, conn: Conn) -> Iterator[None]:
        with self._lock:
            self._conn = conn
        try:
            yield
        finally:
            with self._lock:
                self._conn = None

    def cancel(self) -> None:
        with self._lock:
            if self._conn is not None:
                # best effort: if it fails the query still ends, just later
                with suppress(Exception):
                    self._conn.cancel_safe(timeout=5.0)


class _Target:
    """`MigrationTarget` over a connection inside a transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def applied(self) -> dict[int, str] | None:
        row = self.conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        if row is None or row[0] is None:
            return None
        return dict(self.conn.execute("SELECT version, name FROM schema_migrations").fetchall())

    def ensure_table(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )

    def run(self, migration: Migration) -> None:
        self.conn.execute(migration.sql.encode())
        self.conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
            (migration.version, migration.name),
        )


class _Duplicate(Exception):
    """Rolls back a batch one of whose client message ids was taken meanwhile."""


#: Worker threads (store calls under way) per pooled connection. A thread's slot is given
#: back only when trio's loop takes its result, up to a turn of the loop later, while its
#: connection goes back to the pool at once. With one slot per connection a busy loop capped
#: the store: in the soak, an instance restarted under load (1 500 clients reconnecting, a
#: turn of ~0.2 s) ran ~40 calls a second with 1 200 waiting, and its clients timed out
#: their SUBSCRIBEs for minutes. With more slots than connections the next thread takes a
#: freed connection itself, at the database's pace.
THREADS_PER_CONNECTION: Final = 4


class PostgresStore:
    """`Store` on PostgreSQL. Construct, then `await open()` (or `async with`)."""

    backend = "postgres"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._pool_timeout = pool_timeout
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(connect_timeout)),
            "options": _options(url, statement_timeout),
        }
        self._connect_timeout = connect_timeout
        self._limiter = trio.CapacityLimiter(pool_size * THREADS_PER_CONNECTION)
        self._calls = 0  # store calls under way: running on a connection, or waiting for one
        self._pool: ConnectionPool[Conn] | None = None
        self._listener: Conn | None = None
        self._listen_lock = trio.Lock()
        self._last_used: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool and wait for a first connection; raises Unavailable if none comes.

        The pool is fixed-size (like HikariCP's default): every connection is opened at start
        and kept. A pool that grew on demand made the first burst of traffic, or the first after
        a quiet spell, wait while connections were opened one by one (a 200 ms stall in the
        end-to-end benchmark). Only the first is waited for; the rest open in the background.
        """
        pool: ConnectionPool[Conn] = ConnectionPool(
            self._url,
            min_size=self._pool_size,
            max_size=self._pool_size,
            kwargs=self._connect_kwargs,
            timeout=self._pool_timeout,
            open=False,
            check=self._check_if_idle,
            name="chatd",
        )

        def start() -> None:
            # One plain connection first: it fails with the server's own reason (refused,
            # wrong password, no such database), where the pool would only log warnings
            # and time out.
            try:
                psycopg.connect(self._url, **self._connect_kwargs).close()
            except psycopg.Error as exc:
                raise _open_error(exc) from exc
            pool.open(wait=False)
            try:
                with pool.connection(timeout=self._connect_timeout):
                    pass
            except PoolTimeout:
                pool.close(timeout=0)
                raise OpenError(
                    f"no pooled connection within {self._connect_timeout:g} s", reason="unreachable"
                ) from None

        await trio.to_thread.run_sync(start)
        self._pool = pool

    def _check_if_idle(self, conn: Conn) -> None:
        """The pool's check at checkout, only for a connection idle longer than `_FRESH`: one
        just used is known to be alive, and checking it would cost a round trip per call. A
        connection that died meanwhile fails its call (Unavailable) and the pool drops it."""
        last = self._last_used.get(conn)
        if last is None or time.monotonic() - last > _FRESH:
            ConnectionPool.check_connection(conn)

    async def aclose(self) -> None:
        """Close the listener and the pool; idempotent."""
        self._close_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(lambda: pool.close(timeout=5.0))

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _run(self, work: Callable[[Conn], T]) -> T:
        """Run `work` on a pooled connection in one worker-thread hop."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("store is not open")
        active = _Active()

        def hop() -> T:
            try:
                with pool.connection() as conn, active.hold(conn):
                    try:
                        return work(conn)
                    finally:
                        self._last_used[conn] = time.monotonic()
            except _DOWN as exc:
                raise Unavailable("store unavailable") from exc

        self._calls += 1
        try:
            return await trio.to_thread.run_sync(hop, limiter=self._limiter, abandon_on_cancel=True)
        except trio.Cancelled:
            trio.lowlevel.start_thread_soon(active.cancel, lambda _: None)
            raise
        finally:
            self._calls -= 1

    async def migrate(self) -> list[str]:
        """Apply pending migrations in one transaction under an advisory lock; return names."""

        def work(conn: Conn) -> list[str]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                return apply_migrations(_Target(conn), "postgres")

        return await self._run(work)

    async def check_schema(self) -> None:
        """Raise `SchemaError` unless every migration is applied."""
        await self._run(lambda conn: check_current(_Target(conn), "postgres"))

    def pool_usage(self) -> tuple[int, int, int]:
        """(connections checked out now, pool size, calls waiting for one); the pool's
        counts are read without its lock."""
        pool = self._pool
        stats = {} if pool is None else pool.get_stats()
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        return in_use, self._pool_size, max(0, self._calls - in_use)

    async def ping(self) -> None:
        """``SELECT 1``; raises Unavailable."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- sessions and messages -------------------------------------------------------------

    async def get_or_create_session(
        self,
        intent: str,
        a: Participant,
        b: Participant,
        *,
        now: datetime,
        encrypted: bool = False,
    ) -> ChatSession:
        """See `Store.get_or_create_session`: INSERT ... ON CONFLICT DO NOTHING, then SELECT."""
        lo, hi = canonical_pair(a, b)
        new_id = uuid.uuid4()
        now = base.require_aware(now)

        def work(conn: Conn) -> ChatSession:
            row = conn.execute(
                queries.INSERT_SESSION,
                (
                    new_id,
                    intent,
                    lo.profile_id,
                    lo.email,
                    lo.display_name,
                    hi.profile_id,
                    hi.email,
                    hi.display_name,
                    now,
                    now,
                    encrypted,
                ),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    queries.SESSION_BY_PAIR, (lo.profile_id, hi.profile_id, intent, encrypted)
                ).fetchone()
            assert row is not None, "the conflicting row exists: sessions are never deleted"
            return base.session_from_row(row)

        return await self._run(work)

    async def shares_session(self, a: str, b: str) -> bool:
        """See `Store.shares_session`."""
        row = await self._run(lambda c: c.execute(queries.SHARES_SESSION, (a, b, b, a)).fetchone())
        return row is not None

    async def put_public_key(self, key: PublicKey, *, max_keys: int) -> tuple[PublicKey, bool]:
        """See `Store.put_public_key`: one transaction under a per-user advisory lock."""
        created = base.require_aware(key.created_at)

        def work(conn: Conn) -> tuple[PublicKey, bool]:
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_KEYS_LOCK, key.email)
                )
                row = conn.execute(queries.CURRENT_KEY, (key.email,)).fetchone()
                current = None if row is None else base.key_from_row(row)
                same = conn.execute(queries.KEY, (key.email, key.kid)).fetchone()
                count = int(conn.execute(queries.COUNT_KEYS, (key.email,)).fetchone()[0])  # type: ignore[index]
                verdict = base.key_change(
                    key, current, None if same is None else base.key_from_row(same), count, max_keys
                )
                if verdict is not None:
                    return verdict
                conn.execute(queries.RETIRE_KEY, (created, key.email))
                conn.execute(
                    queries.INSERT_KEY, (key.email, key.kid, key.agreement, key.signing, created)
                )
                peers = conn.execute(queries.PEER_SESSIONS, (key.email,) * 3).fetchall()
                _insert_outbox(
                    conn, key_outbox(key, None if current is None else current.kid, peers), created
                )
                return key, True

        return await self._run(work)

    async def public_key(self, email: str, kid: str | None = None) -> PublicKey | None:
        """See `Store.public_key`."""
        sql, params = (
            (queries.CURRENT_KEY, (email,)) if kid is None else (queries.KEY, (email, kid))
        )
        row = await self._run(lambda c: c.execute(sql, params).fetchone())
        return None if row is None else base.key_from_row(row)

    async def get_session(self, session_id: uuid.UUID) -> ChatSession | None:
        """See `Store.get_session`."""
        row = await self._run(lambda c: c.execute(queries.SESSION_BY_ID, (session_id,)).fetchone())
        return None if row is None else base.session_from_row(row)

    async def append_messages(
        self,
        batch: Sequence[NewMessage],
        *,
        units: Sequence[int] = (),
        lease_until: datetime | None = None,
        sent: Sequence[int] = (),
        now: datetime | None = None,
    ) -> list[AppendResult]:
        """See `Store.append_messages`: one hop, one transaction, a handful of statements
        whatever the batch size (repeats, one bump per session, the messages, the outbox
        rows). The session row locks taken by the bumps (in session id order) order concurrent
        writers, so seqs and outbox ids of a session are both gap-free and ordered. A repeat
        that commits elsewhere while we run makes the whole batch start over once. Every
        refusal is known before anything is written, so a refused unit is simply left out."""
        batch = [
            m if m.sent_at.tzinfo is UTC else replace(m, sent_at=base.require_aware(m.sent_at))
            for m in batch
        ]
        spans = base.unit_spans(units, len(batch))
        lease = None if lease_until is None else base.require_aware(lease_until)
        marked = base.require_aware(now) if now is not None else None

        def work(conn: Conn) -> list[AppendResult]:
            for attempt in (1, 2):
                try:
                    # Pipeline mode: statements go out without waiting for each answer; the
                    # thread waits (and takes the GIL back from the event loop) only where a
                    # result is needed: three times per batch instead of once per statement.
                    with conn.pipeline(), conn.transaction():
                        if sent:
                            conn.execute(queries.SENT, (marked or datetime.now(UTC), list(sent)))
                        return _append_batch(conn, batch, spans, lease)
                except (_Duplicate, psycopg.errors.ForeignKeyViolation):
                    # a client id another writer committed since REPEATS: its message was
                    # not inserted (so neither could its outbox rows be); start over once
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        return await self._run(work)

    async def find_message(self, sender_email: str, client_message_id: str) -> Message | None:
        """See `Store.find_message`."""
        row = await self._run(
            lambda c: c.execute(
                queries.MESSAGE_BY_CLIENT_ID, (sender_email, client_message_id)
            ).fetchone()
        )
        return None if row is None else base.message_from_row(row)

    async def find_messages(
        self, sender_email: str, client_message_ids: Sequence[str]
    ) -> list[Message]:
        """See `Store.find_messages`."""
        return await self._messages(
            queries.MESSAGES_BY_CLIENT_IDS, (sender_email, list(client_message_ids))
        )

    async def _messages(self, sql: str, params: Sequence[Any]) -> list[Message]:
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [base.message_from_row(r) for r in rows]

    async def history(
        self,
        session_id: uuid.UUID,
        *,
        limit: int,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Message]:
        """See `Store.history`."""
        sql, params = queries.history(session_id, limit, before, after)
        found = await self._messages(sql, params)
        return found if after is None else found[::-1]

    async def messages_after(self, session_id: uuid.UUID, seq: int, limit: int) -> list[Message]:
        """See `Store.messages_after`."""
        return await self._messages(queries.MESSAGES_AFTER, (session_id, seq, limit))

    async def unread(
        self, session_id: uuid.UUID, reader_email: str, *, limit: int | None = None
    ) -> list[Message]:
        """See `Store.unread`."""
        return await self._messages(queries.UNREAD, (session_id, reader_email, limit))

    async def unread_count(self, session_id: uuid.UUID, reader_email: str) -> int:
        """See `Store.unread_count`."""
        row = await self._run(
            lambda c: c.execute(queries.UNREAD_COUNT, (session_id, reader_email)).fetchone()
        )
        return int(row[0]) if row else 0

    async def unread_totals(self, reader_email: str) -> list[tuple[uuid.UUID, int]]:
        """See `Store.unread_totals`."""
        rows = await self._run(
            lambda c: c.execute(queries.UNREAD_TOTALS, {"e": reader_email}).fetchall()
        )
        return [(r[0], int(r[1])) for r in rows]

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
        """See `Store.mark`. Locks the session row first, like `append_messages`, so receipt
        outbox rows stay in commit order with the session's message rows."""
        base.check_mark_args(status, up_to_seq, message_ids)
        at = base.require_aware(at)
        ids = list(message_ids or [])
        params = {"s": session_id, "r": reader_email, "at": at, "up": up_to_seq, "ids": ids}

        def work(conn: Conn) -> ReceiptUpdate:
            with conn.transaction():
                row = conn.execute(queries.LOCK_SESSION, (session_id,)).fetchone()
                if row is None:
                    raise NotFound("unknown session")
                last_seq = int(row[0]) - 1
                changed = conn.execute(queries.mark(status), params).fetchall()
                top = None
                if ids:
                    top = conn.execute(queries.MAX_SEQ_OF_IDS, params).fetchone()[0]  # type: ignore[index]
                update = base.receipt_update(
                    session_id,
                    reader_email,
                    status,
                    listed_top=top,
                    up_to_seq=up_to_seq,
                    last_seq=last_seq,
                    changed=len(changed),
                    at=at,
                )
                if changed:
                    _insert_outbox(conn, receipt_outbox(update, {r[1] for r in changed}), at)
                return update

        return await self._run(work)

    async def sessions_for(
        self, email: str, *, limit: int, cursor: str | None = None
    ) -> list[SessionSummary]:
        """See `Store.sessions_for`."""
        sql, params = queries.sessions_for(email, limit, cursor)
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [base.summary_from_row(r) for r in rows]

    async def peers(
        self, email: str, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        """See `Store.peers`."""
        if among is not None and not among:
            return []
        sql, params = queries.peers(email, limit, among)
        rows = await self._run(lambda c: c.execute(sql, params).fetchall())
        return [str(r[0]) for r in rows]

    # -- outbox ----------------------------------------------------------------------------

    async def claim_outbox(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[OutboxRow]:
        """See `Store.claim_outbox`: one statement (`queries.CLAIM`) takes SKIP LOCKED
        candidates and applies the per-session prefix rule against every unprocessed row we did
        not lock, including ones other claimers hold."""
        now = base.require_aware(now)
        params = {"now": now, "limit": limit, "until": now + timedelta(seconds=lease_seconds)}
        rows = await self._run(lambda c: c.execute(queries.CLAIM, params).fetchall())
        return sorted((base.outbox_from_row(r) for r in rows), key=lambda r: r.id)

    async def release_outbox(self, ids: Sequence[int], *, now: datetime) -> None:
        """See `Store.release_outbox`."""
        await self._run(lambda c: c.execute(queries.RELEASE, (base.require_aware(now), list(ids))))

    async def mark_outbox_sent(self, ids: Sequence[int], *, now: datetime) -> None:
        """See `Store.mark_outbox_sent`."""
        await self._run(lambda c: c.execute(queries.SENT, (base.require_aware(now), list(ids))))

    async def mark_outbox_failed(
        self, row_id: int, *, error: str, next_retry_at: datetime, dead: bool
    ) -> None:
        """See `Store.mark_outbox_failed`."""
        params = (error[: base.MAX_ERROR_TEXT], base.require_aware(next_retry_at), dead, row_id)
        await self._run(lambda c: c.execute(queries.FAILED, params))

    async def outbox_stats(self) -> tuple[int, int]:
        """See `Store.outbox_stats`."""
        row = await self._run(lambda c: c.execute(queries.OUTBOX_STATS).fetchone())
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def purge_outbox(self, *, sent_before: datetime, limit: int) -> int:
        """See `Store.purge_outbox`."""
        params = (base.require_aware(sent_before), limit)
        cur = await self._run(lambda c: c.execute(queries.PURGE, params))
        return cur.rowcount

    async def wait_for_outbox(self) -> None:
        """See `Store.wait_for_outbox`: LISTEN on a dedicated connection. Returns at once after
        (re)connecting the listener, since rows may have come while nobody listened; while the
        database is down it retries every second (the caller's poll timeout still applies)."""
        async with self._listen_lock:
            while self._listener is None:
                try:
                    self._listener = await trio.to_thread.run_sync(self._listen)
                except Unavailable:
                    await trio.sleep(_LISTEN_RETRY)
                    continue
                return
            listener = self._listener
            try:
                while not any(True for _ in listener.notifies(timeout=0)):
                    await trio.lowlevel.wait_readable(listener.fileno())
            except _DOWN:
                self._close_listener()
            except trio.ClosedResourceError:  # aclose() while we waited: same as "down"
                raise Unavailable("store closed") from None

    def _listen(self) -> Conn:
        try:
            conn = psycopg.connect(self._url, **self._connect_kwargs)
            conn.execute(f"LISTEN {OUTBOX_CHANNEL}")
        except _DOWN as exc:
            raise Unavailable("store unavailable") from exc
        return conn

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None and not conn.closed:
            trio.lowlevel.notify_closing(conn.fileno())
            conn.close()


def _open_error(exc: psycopg.Error) -> OpenError:
    """Classify a failed connect. libpq says only text (no SQLSTATE before the session
    exists): ``connection to server at "h", port p failed: FATAL:  <reason>``."""
    text = str(exc).strip().rpartition(" failed: ")[2]
    cause = text.splitlines()[0].removeprefix("FATAL:").strip() if text else type(exc).__name__
    if any(
        s in cause.lower()
        for s in ("authentication failed", "pg_hba.conf", "role ", "permission denied")
    ):
        return OpenError(cause, reason="login")
    if cause.startswith("database ") and cause.endswith("does not exist"):
        return OpenError(cause, reason="no-database")
    return OpenError(cause, reason="unreachable")


def _options(url: str, statement_timeout: float) -> str:
    """Server options for every connection, keeping any the URL already sets (search_path)."""
    ours = f"-c timezone=UTC -c statement_timeout={int(statement_timeout * 1000)}"
    theirs = conninfo_to_dict(url).get("options")
    return f"{theirs} {ours}" if theirs else ours


def _append_batch(
    conn: Conn, batch: Sequence[NewMessage], spans: Sequence[range], lease: datetime | None
) -> list[AppendResult]:
    """The statements of `PostgresStore.append_messages`, inside its transaction."""
    results: list[AppendResult | None] = [None] * len(batch)
    keys = [(m.sender.email, m.client_message_id) for m in batch]
    repeats = conn.execute(queries.REPEATS, ([k[0] for k in keys], [k[1] for k in keys]))
    # One statement locks every session of the batch, in id order (so two batches never wait
    # on each other in a cycle), one more moves all their next_seq: a batch costs the same
    # few round trips whatever its size.
    lock = conn.execute(queries.LOCK_SESSIONS, (sorted({m.session_id for m in batch}),))
    found = {(r[4], r[7]): base.message_from_row(r) for r in repeats.fetchall()}
    locked = {row[0]: base.session_from_row(row) for row in lock.fetchall()}
    first_use: dict[tuple[str, str], int] = {}
    for span in spans:
        claimed = []
        for index in span:
            key = keys[index]
            if key in found:
                results[index] = Appended(found[key], False)
            elif key in first_use:  # a repeat within the batch: answered as its first use
                first = results[first_use[key]]
                if isinstance(first, ChatError):
                    results[index] = first  # else filled in once the first one is stored
            else:
                first_use[key] = index
                claimed.append(key)
                session = locked.get(batch[index].session_id)
                if session is None:
                    results[index] = NotFound("unknown session")
                elif not session.is_participant(batch[index].sender.email):
                    # never refused here by the service, which checks first
                    results[index] = Forbidden("not a participant of this session")
        if len(span) > 1 and base.withhold_refused(batch, results, span):
            for key in claimed:  # not stored: a later use of the id is a first use
                del first_use[key]
    fresh = [i for i in first_use.values() if results[i] is None]
    groups = base.group_by_session([batch[i] for i in fresh])
    messages: list[Message] = []
    entries: list[OutboxEntry] = []
    bumps: list[tuple[uuid.UUID, int, datetime]] = []
    for session_id, positions in groups.items():
        session = locked[session_id]
        allowed = [fresh[p] for p in positions]
        first_seq = session.last_seq + 1
        for offset, index in enumerate(allowed):
            item = batch[index]
            message = Message(
                uuid.uuid4(),
                session_id,
                first_seq + offset,
                item.sender.profile_id,
                item.sender.email,
                item.sender.display_name,
                item.content,
                item.client_message_id,
                item.sent_at,
            )
            messages.append(message)
            entries.extend(message_outbox(session, message, item.trace_context))
            results[index] = Appended(message, True)
        bumps.append((session_id, first_seq + len(allowed), max(batch[i].sent_at for i in allowed)))
    if bumps:
        conn.execute(queries.BUMP_SESSIONS, [list(col) for col in zip(*bumps, strict=True)])
    if messages:
        inserting = conn.execute(
            queries.INSERT_MESSAGES,
            _columns(
                messages,
                "message_id",
                "session_id",
                "seq",
                "sender_id",
                "sender_email",
                "sender_display_name",
                "content",
                "client_message_id",
                "sent_at",
            ),
        )
        rows = _insert_outbox_rows(conn, entries, max(m.sent_at for m in messages), lease)
        if len(inserting.fetchall()) != len(messages):
            raise _Duplicate  # a client id committed by another writer since REPEATS
        by_message: dict[uuid.UUID | None, list[OutboxRow]] = {}
        for row in rows:
            by_message.setdefault(row.message_id, []).append(row)
        for index, result in enumerate(results):
            if isinstance(result, Appended) and result.created:
                results[index] = Appended(
                    result.message, True, tuple(by_message[result.message.message_id])
                )
    for index, key in enumerate(keys):
        if results[index] is None:  # repeated within the batch
            first = results[first_use[key]]
            results[index] = (
                Appended(first.message, False) if isinstance(first, Appended) else first
            )
    return [r for r in results if r is not None]


def _columns(items: Sequence[Any], *names: str) -> list[list[Any]]:
    """Parallel arrays of `items`' attributes, for the unnest inserts."""
    return [[getattr(item, name) for item in items] for name in names]


def _insert_outbox_rows(
    conn: Conn, entries: list[OutboxEntry], now: datetime, lease: datetime | None
) -> list[OutboxRow]:
    """Write outbox rows, due at once (and NOTIFY listeners, on commit) or leased to the
    caller until `lease`; the rows as stored, in id order."""
    params = [
        lease or now,
        now,
        *_columns(
            entries,
            "message_id",
            "session_id",
            "seq",
            "event",
            "destination",
            "payload",
            "trace_context",
        ),
    ]
    inserting = conn.execute(queries.INSERT_OUTBOX_ROWS, params)
    if lease is None:
        conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
    return sorted((base.outbox_from_row(r) for r in inserting.fetchall()), key=lambda r: r.id)


def _insert_outbox(conn: Conn, entries: list[OutboxEntry], now: datetime) -> None:
    """Write outbox rows and wake listeners; NOTIFY is delivered only if the transaction commits."""
    if not entries:
        return
    with conn.cursor() as cur:
        cur.executemany(
            queries.INSERT_OUTBOX,
            [
                (e.message_id, e.session_id, e.seq, e.event, e.destination, e.payload, now, now)
                for e in entries
            ],
        )
    conn.execute(f"NOTIFY {OUTBOX_CHANNEL}")
