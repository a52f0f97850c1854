"""Embedded SQLite backend: stdlib sqlite3 in WAL mode, driven from trio worker threads.

SQLite allows one writer at a time, so every write transaction runs on the single writer
connection behind a `CapacityLimiter(1)` (``BEGIN IMMEDIATE``, so the lock is taken up front and
"check, then insert" is race-free). Reads run on a few separate connections: WAL lets them
proceed while a write is in flight, each inside a read transaction for a consistent snapshot.
The outbox wake-up is an in-process signal: the embedded mode is one instance by definition.
"""

from __future__ import annotations

import queue
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import trio

from chatd.domain.destinations import key_outbox, message_outbox, receipt_outbox
from chatd.domain.errors import Forbidden, NotFound, Unavailable
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
from chatd.storage import sqlite_sql as sql
from chatd.storage.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_STATEMENT_TIMEOUT,
    Appended,
    AppendResult,
    NewMessage,
    OpenError,
    to_micros,
)
from chatd.storage.migrate import Migration, MigrationError, apply_migrations, check_current

T = TypeVar("T")
_MAX_READERS = 4


def _uid(value: str) -> uuid.UUID:
    return uuid.UUID(value)


def _session(row: Sequence[Any]) -> ChatSession:
    return base.session_from_row(row, _uid, base.from_micros)


def _key(row: Sequence[Any]) -> PublicKey:
    return base.key_from_row(row, base.from_micros)


def _message(row: Sequence[Any]) -> Message:
    return base.message_from_row(row, _uid, base.from_micros)


class _Target:
    """`MigrationTarget` over the writer connection inside ``BEGIN IMMEDIATE``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def applied(self) -> dict[int, str] | None:
        if self.conn.execute(sql.HAS_MIGRATIONS_TABLE).fetchone() is None:
            return None
        return dict(self.conn.execute("SELECT version, name FROM schema_migrations").fetchall())

    def ensure_table(self) -> None:
        self.conn.execute(sql.CREATE_MIGRATIONS_TABLE)

    def run(self, migration: Migration) -> None:
        # executescript would COMMIT first; statement by statement keeps it all in one transaction
        for statement in sql.split_script(migration.sql):
            self.conn.execute(statement)
        self.conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, to_micros(datetime.now(UTC))),
        )


class SqliteStore:
    """`Store` on one SQLite file. Construct, then `await open()` (or `async with`)."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    ) -> None:
        # connect_timeout/statement_timeout have no SQLite meaning; accepted for a uniform factory
        self._path = Path(path)
        self._busy_timeout = pool_timeout
        self._reader_count = max(1, min(pool_size, _MAX_READERS))
        self._writer: sqlite3.Connection | None = None
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(self._reader_count)
        self._calls = 0  # store calls under way: running, or waiting for a connection
        # The writer thread bumps `_outbox_commits` after committing outbox rows; trio code then
        # sets the event. Counters (not just the event) so a commit between two waits is not lost.
        self._outbox_dirty = False
        self._outbox_commits = 0
        self._outbox_signalled = 0
        self._outbox_seen = 0
        self._outbox_event = trio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        """Create the file (and its folder) if needed, switch to WAL, open the connections."""

        def start() -> None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._connect()
            writer.execute("PRAGMA journal_mode = WAL")
            writer.execute("PRAGMA synchronous = NORMAL")
            self._writer = writer
            for _ in range(self._reader_count):
                self._readers.put(self._connect())

        try:
            await trio.to_thread.run_sync(start)
        except (sqlite3.Error, OSError) as exc:
            await self.aclose()
            cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OpenError(cause, reason="file") from exc

    async def aclose(self) -> None:
        """Close every connection; idempotent. Waits for running transactions to finish."""
        async with self._write_limiter:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        for _ in range(self._reader_count):
            async with self._read_limiter:
                try:
                    self._readers.get_nowait().close()
                except queue.Empty:
                    break

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _write(
        self, work: Callable[[sqlite3.Connection], T], *, foreign_keys: bool = True
    ) -> T:
        """Run `work` in one ``BEGIN IMMEDIATE`` transaction on the writer, in one thread hop.

        `foreign_keys` False turns enforcement off for this transaction (SQLite only allows
        that outside a transaction): for migrations that rebuild a referenced table."""

        def hop() -> T:
            conn = self._writer
            if conn is None:
                raise RuntimeError("store is not open")
            self._outbox_dirty = False
            if not foreign_keys:
                conn.execute("PRAGMA foreign_keys = OFF")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if not foreign_keys:
                    conn.execute("PRAGMA foreign_keys = ON")
            if self._outbox_dirty:
                self._outbox_commits += 1
            return result

        self._calls += 1
        try:
            return await trio.to_thread.run_sync(hop, limiter=self._write_limiter)
        except sqlite3.OperationalError as exc:
            raise Unavailable("store unavailable") from exc
        finally:
            self._calls -= 1
            self._signal_outbox()

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one read transaction (a consistent snapshot) on a reader connection."""

        def hop() -> T:
            conn = self._readers.get_nowait()
            try:
                conn.execute("BEGIN")
                try:
                    return work(conn)
                finally:
                    conn.execute("COMMIT")
            finally:
                self._readers.put(conn)

        self._calls += 1
        try:
            return await trio.to_thread.run_sync(hop, limiter=self._read_limiter)
        except queue.Empty:
            raise RuntimeError("store is not open") from None
        except sqlite3.OperationalError as exc:
            raise Unavailable("store unavailable") from exc
        finally:
            self._calls -= 1

    def _signal_outbox(self) -> None:
        if self._outbox_commits != self._outbox_signalled:
            self._outbox_signalled = self._outbox_commits
            self._outbox_event.set()
            self._outbox_event = trio.Event()

    def _insert_outbox(
        self, conn: sqlite3.Connection, entries: list[OutboxEntry], now: int
    ) -> None:
        """Write outbox rows (writer thread, inside the caller's transaction)."""
        conn.executemany(
            sql.INSERT_OUTBOX,
            [
                (
                    None if e.message_id is None else str(e.message_id),
                    str(e.session_id),
                    e.seq,
                    e.event,
                    e.destination,
                    e.payload,
                    now,
                    now,
                )
                for e in entries
            ],
        )
        self._outbox_dirty = self._outbox_dirty or bool(entries)

    async def migrate(self) -> list[str]:
        """Apply pending migrations in one write transaction; return the names applied.

        Foreign keys are off meanwhile (a migration may rebuild a referenced table, SQLite's
        documented way to change a constraint) and checked before COMMIT: a violation is a
        `MigrationError` and nothing is kept."""

        def work(conn: sqlite3.Connection) -> list[str]:
            names = apply_migrations(_Target(conn), "sqlite")
            broken = conn.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise MigrationError(
                    f"migration left {len(broken)} broken foreign keys "
                    f"(first in table {broken[0][0]})"
                )
            return names

        return await self._write(work, foreign_keys=False)

    async def check_schema(self) -> None:
        """Raise `SchemaError` unless every migration is applied."""
        await self._read(lambda conn: check_current(_Target(conn), "sqlite"))

    def pool_usage(self) -> tuple[int, int, int]:
        """(connections busy now, connections in all, calls waiting for one): the writer plus
        the readers."""
        busy = int(self._write_limiter.borrowed_tokens + self._read_limiter.borrowed_tokens)
        return busy, 1 + self._reader_count, max(0, self._calls - busy)

    async def ping(self) -> None:
        """``SELECT 1`` on a reader; raises Unavailable."""
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

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
        """See `Store.get_or_create_session`."""
        lo, hi = canonical_pair(a, b)
        at = to_micros(now)
        params = (
            str(uuid.uuid4()),
            intent,
            lo.profile_id,
            lo.email,
            lo.display_name,
            hi.profile_id,
            hi.email,
            hi.display_name,
            at,
            at,
            int(encrypted),
        )

        def work(conn: sqlite3.Connection) -> ChatSession:
            row = conn.execute(sql.INSERT_SESSION, params).fetchone()
            if row is None:
                row = conn.execute(
                    sql.SESSION_BY_PAIR, (lo.profile_id, hi.profile_id, intent, int(encrypted))
                ).fetchone()
            return _session(row)

        return await self._write(work)

    async def shares_session(self, a: str, b: str) -> bool:
        """See `Store.shares_session`."""
        row = await self._read(lambda c: c.execute(sql.SHARES_SESSION, (a, b, b, a)).fetchone())
        return row is not None

    async def put_public_key(self, key: PublicKey, *, max_keys: int) -> tuple[PublicKey, bool]:
        """See `Store.put_public_key`: one write transaction (SQLite's lock serializes)."""
        created = to_micros(key.created_at)

        def work(conn: sqlite3.Connection) -> tuple[PublicKey, bool]:
            row = conn.execute(sql.CURRENT_KEY, (key.email,)).fetchone()
            current = None if row is None else _key(row)
            same = conn.execute(sql.KEY, (key.email, key.kid)).fetchone()
            count = int(conn.execute(sql.COUNT_KEYS, (key.email,)).fetchone()[0])
            verdict = base.key_change(
                key, current, None if same is None else _key(same), count, max_keys
            )
            if verdict is not None:
                return verdict
            conn.execute(sql.RETIRE_KEY, (created, key.email))
            conn.execute(sql.INSERT_KEY, (key.email, key.kid, key.agreement, key.signing, created))
            peers = [
                (peer, _uid(sid))
                for peer, sid in conn.execute(sql.PEER_SESSIONS, (key.email,) * 3).fetchall()
            ]
            self._insert_outbox(
                conn, key_outbox(key, None if current is None else current.kid, peers), created
            )
            return key, True

        return await self._write(work)

    async def public_key(self, email: str, kid: str | None = None) -> PublicKey | None:
        """See `Store.public_key`."""
        query, params = (sql.CURRENT_KEY, (email,)) if kid is None else (sql.KEY, (email, kid))
        row = await self._read(lambda c: c.execute(query, params).fetchone())
        return None if row is None else _key(row)

    async def get_session(self, session_id: uuid.UUID) -> ChatSession | None:
        """See `Store.get_session`."""
        row = await self._read(
            lambda c: c.execute(sql.SESSION_BY_ID, (str(session_id),)).fetchone()
        )
        return None if row is None else _session(row)

    async def append_messages(
        self,
        batch: Sequence[NewMessage],
        *,
        units: Sequence[int] = (),
        lease_until: datetime | None = None,
        sent: Sequence[int] = (),
        now: datetime | None = None,
    ) -> list[AppendResult]:
        """See `Store.append_messages`: one write transaction; the write lock makes each
        check-then-insert race-free, so no repeat can appear meanwhile. A unit of several
        messages runs inside a savepoint, rolled back when one of them is refused."""
        lease = None if lease_until is None else to_micros(lease_until)
        marked = to_micros(now if now is not None else datetime.now(UTC))
        spans = base.unit_spans(units, len(batch))

        def work(conn: sqlite3.Connection) -> list[AppendResult]:
            if sent:
                query, params = sql.with_ids(sql.SENT, [marked], sent)
                conn.execute(query, params)
            results: list[AppendResult | None] = [None] * len(batch)
            first: dict[tuple[str, str], AppendResult] = {}
            for span in spans:
                whole = len(span) > 1
                if whole:
                    conn.execute("SAVEPOINT unit")
                claimed = []
                for index in span:
                    item = batch[index]
                    key = (item.sender.email, item.client_message_id)
                    if key in first:  # repeated within the batch: a repeat of its first use
                        earlier = first[key]
                        if not isinstance(earlier, Appended):
                            results[index] = earlier
                        elif not earlier.created:
                            results[index] = Appended(earlier.message, False)
                        continue  # a new first use: answered below, if its unit stands
                    first[key] = results[index] = self._append(conn, item, lease)
                    claimed.append(key)
                if whole:
                    if base.withhold_refused(batch, results, span):
                        conn.execute("ROLLBACK TO unit")
                        for key in claimed:  # not stored: a later use is a first use
                            del first[key]
                    conn.execute("RELEASE unit")
            for index, item in enumerate(batch):
                if results[index] is None:
                    earlier = first[(item.sender.email, item.client_message_id)]
                    assert isinstance(earlier, Appended)
                    results[index] = Appended(earlier.message, False)
            return [r for r in results if r is not None]

        return await self._write(work)

    def _append(
        self, conn: sqlite3.Connection, item: NewMessage, lease: int | None
    ) -> AppendResult:
        """One message of `append_messages` (writer thread, inside its transaction)."""
        original = conn.execute(
            sql.MESSAGE_BY_CLIENT_ID, (item.sender.email, item.client_message_id)
        ).fetchone()
        if original is not None:
            return Appended(_message(original), False)
        existing = conn.execute(sql.SESSION_BY_ID, (str(item.session_id),)).fetchone()
        if existing is None:
            return NotFound("unknown session")
        if not _session(existing).is_participant(item.sender.email):
            return Forbidden("not a participant of this session")
        at = to_micros(item.sent_at)
        session = _session(conn.execute(sql.BUMP_SEQ, (at, str(item.session_id))).fetchone())
        message = Message(
            uuid.uuid4(),
            item.session_id,
            session.last_seq,
            item.sender.profile_id,
            item.sender.email,
            item.sender.display_name,
            item.content,
            item.client_message_id,
            base.from_micros(at),
        )
        conn.execute(
            sql.INSERT_MESSAGE,
            (
                str(message.message_id),
                str(item.session_id),
                message.seq,
                item.sender.profile_id,
                item.sender.email,
                item.sender.display_name,
                item.content,
                item.client_message_id,
                at,
            ),
        )
        rows = [
            base.outbox_from_row(
                conn.execute(
                    sql.INSERT_OUTBOX_ROW,
                    (
                        str(e.message_id),
                        str(e.session_id),
                        e.seq,
                        e.event,
                        e.destination,
                        e.payload,
                        e.trace_context,
                        lease if lease is not None else at,
                        at,
                    ),
                ).fetchone(),
                _uid,
                base.from_micros,
            )
            for e in message_outbox(session, message, item.trace_context)
        ]
        self._outbox_dirty = self._outbox_dirty or lease is None
        return Appended(message, True, tuple(rows))

    async def find_message(self, sender_email: str, client_message_id: str) -> Message | None:
        """See `Store.find_message`."""
        row = await self._read(
            lambda c: c.execute(
                sql.MESSAGE_BY_CLIENT_ID, (sender_email, client_message_id)
            ).fetchone()
        )
        return None if row is None else _message(row)

    async def find_messages(
        self, sender_email: str, client_message_ids: Sequence[str]
    ) -> list[Message]:
        """See `Store.find_messages`."""
        if not client_message_ids:
            return []
        query, params = sql.with_ids(sql.MESSAGES_BY_CLIENT_IDS, [sender_email], client_message_ids)
        return await self._messages(query, params)

    async def _messages(self, query: str, params: Sequence[Any]) -> list[Message]:
        rows = await self._read(lambda c: c.execute(query, params).fetchall())
        return [_message(r) for r in rows]

    async def history(
        self,
        session_id: uuid.UUID,
        *,
        limit: int,
        before: int | None = None,
        after: int | None = None,
    ) -> list[Message]:
        """See `Store.history`."""
        query, params = sql.history(str(session_id), limit, before, after)
        found = await self._messages(query, params)
        return found if after is None else found[::-1]

    async def messages_after(self, session_id: uuid.UUID, seq: int, limit: int) -> list[Message]:
        """See `Store.messages_after`."""
        return await self._messages(sql.MESSAGES_AFTER, (str(session_id), seq, limit))

    async def unread(
        self, session_id: uuid.UUID, reader_email: str, *, limit: int | None = None
    ) -> list[Message]:
        """See `Store.unread`."""
        n = -1 if limit is None else limit
        return await self._messages(sql.UNREAD, (str(session_id), reader_email, n))

    async def unread_count(self, session_id: uuid.UUID, reader_email: str) -> int:
        """See `Store.unread_count`."""
        row = await self._read(
            lambda c: c.execute(sql.UNREAD_COUNT, (str(session_id), reader_email)).fetchone()
        )
        return int(row[0])

    async def unread_totals(self, reader_email: str) -> list[tuple[uuid.UUID, int]]:
        """See `Store.unread_totals`."""
        rows = await self._read(
            lambda c: c.execute(sql.UNREAD_TOTALS, {"e": reader_email}).fetchall()
        )
        return [(_uid(r[0]), int(r[1])) for r in rows]

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
        """See `Store.mark`."""
        base.check_mark_args(status, up_to_seq, message_ids)
        at = base.require_aware(at)
        ids = [str(i) for i in message_ids or []]
        micros = to_micros(at)

        def work(conn: sqlite3.Connection) -> ReceiptUpdate:
            row = conn.execute(sql.NEXT_SEQ, (str(session_id),)).fetchone()
            if row is None:
                raise NotFound("unknown session")
            last_seq = int(row[0]) - 1
            query, params = sql.mark(status, str(session_id), reader_email, micros, up_to_seq, ids)
            changed = conn.execute(query, params).fetchall()
            top = None
            if ids:
                query, params = sql.max_seq_of_ids(str(session_id), reader_email, ids)
                top = conn.execute(query, params).fetchone()[0]
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
                entries = receipt_outbox(update, {r[1] for r in changed})
                self._insert_outbox(conn, entries, micros)
            return update

        return await self._write(work)

    async def sessions_for(
        self, email: str, *, limit: int, cursor: str | None = None
    ) -> list[SessionSummary]:
        """See `Store.sessions_for`."""
        query, params = sql.sessions_for(email, limit, cursor)
        rows = await self._read(lambda c: c.execute(query, params).fetchall())
        return [base.summary_from_row(r, _uid, base.from_micros) for r in rows]

    async def peers(
        self, email: str, *, limit: int, among: Sequence[str] | None = None
    ) -> list[str]:
        """See `Store.peers`."""
        if among is not None and not among:
            return []
        query, params = sql.peers(email, limit, among)
        rows = await self._read(lambda c: c.execute(query, params).fetchall())
        return [str(r[0]) for r in rows]

    # -- outbox ----------------------------------------------------------------------------

    async def claim_outbox(
        self, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[OutboxRow]:
        """See `Store.claim_outbox`: the same prefix rule, inside one write transaction."""
        at = to_micros(now)
        until = to_micros(now + timedelta(seconds=lease_seconds))

        def work(conn: sqlite3.Connection) -> list[OutboxRow]:
            cand = [(r[0], _uid(r[1])) for r in conn.execute(sql.CLAIM_CANDIDATES, (at, limit))]
            if not cand:
                return []
            query, params = sql.claim_blockers([c[1] for c in cand], [c[0] for c in cand])
            blockers = {_uid(s): i for s, i in conn.execute(query, params)}
            keep = base.claimable(cand, blockers)
            if not keep:
                return []
            query, params = sql.lease(until, keep)
            rows = conn.execute(query, params).fetchall()
            return sorted(
                (base.outbox_from_row(r, _uid, base.from_micros) for r in rows), key=lambda r: r.id
            )

        return await self._write(work)

    async def _update_ids(self, template: str, lead: Sequence[Any], ids: Sequence[int]) -> None:
        if ids:
            query, params = sql.with_ids(template, lead, ids)
            await self._write(lambda c: c.execute(query, params))

    async def release_outbox(self, ids: Sequence[int], *, now: datetime) -> None:
        """See `Store.release_outbox`."""
        await self._update_ids(sql.RELEASE, [to_micros(now)], ids)

    async def mark_outbox_sent(self, ids: Sequence[int], *, now: datetime) -> None:
        """See `Store.mark_outbox_sent`."""
        await self._update_ids(sql.SENT, [to_micros(now)], ids)

    async def mark_outbox_failed(
        self, row_id: int, *, error: str, next_retry_at: datetime, dead: bool
    ) -> None:
        """See `Store.mark_outbox_failed`."""
        params = (error[: base.MAX_ERROR_TEXT], to_micros(next_retry_at), int(dead), row_id)
        await self._write(lambda c: c.execute(sql.FAILED, params))

    async def outbox_stats(self) -> tuple[int, int]:
        """See `Store.outbox_stats`."""
        row = await self._read(lambda c: c.execute(sql.OUTBOX_STATS).fetchone())
        return int(row[0]), int(row[1])

    async def purge_outbox(self, *, sent_before: datetime, limit: int) -> int:
        """See `Store.purge_outbox`."""
        params = (to_micros(sent_before), limit)
        cur = await self._write(lambda c: c.execute(sql.PURGE, params))
        return int(cur.rowcount)

    async def wait_for_outbox(self) -> None:
        """See `Store.wait_for_outbox`: woken by this process's own commits of outbox rows."""
        while self._outbox_commits == self._outbox_seen:
            await self._outbox_event.wait()
        self._outbox_seen = self._outbox_commits
