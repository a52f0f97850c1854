"""The SQL text of the SQLite backend, kept apart from the code that drives it.

Same statements as `postgres_sql`, in SQLite's dialect: ``?``/``:name`` placeholders, 0/1
booleans, integer-microsecond timestamps, uuid text, and ``IN (?, ...)`` lists built here from
the number of items (never from their values). No ``SKIP LOCKED``: there is only one writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, cast

from chatd.domain.models import ReceiptStatus
from chatd.storage import base
from chatd.storage.base import (
    KEY_COLUMNS,
    MESSAGE_COLUMNS,
    OUTBOX_COLUMNS,
    SESSION_COLUMNS,
    columns,
)

SESSION = columns(SESSION_COLUMNS)
KEY_COLUMNS_SQL = columns(KEY_COLUMNS)
MESSAGE = columns(MESSAGE_COLUMNS)
OUTBOX = columns(OUTBOX_COLUMNS)

HAS_MIGRATIONS_TABLE = (
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
)
CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"""

INSERT_SESSION = f"""
INSERT INTO chat_sessions (id, intent, profile_lo, email_lo, name_lo, profile_hi, email_hi,
                           name_hi, created_at, last_activity_at, encrypted)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (profile_lo, profile_hi, intent, encrypted) DO NOTHING
RETURNING {SESSION}"""
SESSION_BY_PAIR = f"""
SELECT {SESSION} FROM chat_sessions
WHERE profile_lo = ? AND profile_hi = ? AND intent = ? AND encrypted = ?"""
# (peer, session id) of each of a user's sessions: whom a key change is announced to.
PEER_SESSIONS = """
SELECT CASE WHEN email_lo = ? THEN email_hi ELSE email_lo END, id FROM chat_sessions
WHERE email_lo = ? OR email_hi = ? ORDER BY id"""
SHARES_SESSION = """
SELECT 1 FROM chat_sessions
WHERE (email_lo = ? AND email_hi = ?) OR (email_lo = ? AND email_hi = ?) LIMIT 1"""
KEY = f"SELECT {KEY_COLUMNS_SQL} FROM chat_user_keys WHERE email = ? AND kid = ?"
CURRENT_KEY = f"SELECT {KEY_COLUMNS_SQL} FROM chat_user_keys WHERE email = ? AND retired_at IS NULL"
COUNT_KEYS = "SELECT count(*) FROM chat_user_keys WHERE email = ?"
RETIRE_KEY = "UPDATE chat_user_keys SET retired_at = ? WHERE email = ? AND retired_at IS NULL"
INSERT_KEY = """
INSERT INTO chat_user_keys (email, kid, agreement_jwk, signing_jwk, created_at)
VALUES (?, ?, ?, ?, ?)"""
SESSION_BY_ID = f"SELECT {SESSION} FROM chat_sessions WHERE id = ?"
NEXT_SEQ = "SELECT next_seq FROM chat_sessions WHERE id = ?"
BUMP_SEQ = f"""
UPDATE chat_sessions SET next_seq = next_seq + 1, last_activity_at = max(last_activity_at, ?)
WHERE id = ? RETURNING {SESSION}"""

MESSAGE_BY_CLIENT_ID = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE sender_email = ? AND client_msg_id = ?"
)
MESSAGES_BY_CLIENT_IDS = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE sender_email = ? AND client_msg_id IN ({{}})"
)
INSERT_MESSAGE = """
INSERT INTO chat_messages (id, session_id, seq, sender_id, sender_email, sender_display_name,
                           content, client_msg_id, sent_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""
MESSAGES_AFTER = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)
_UNSEEN = "session_id = ? AND seen = 0 AND sender_email <> ?"
UNREAD = f"SELECT {MESSAGE} FROM chat_messages WHERE {_UNSEEN} ORDER BY seq LIMIT ?"
UNREAD_COUNT = f"SELECT count(*) FROM chat_messages WHERE {_UNSEEN}"
UNREAD_TOTALS = """
SELECT s.id, count(*) FROM chat_sessions s
JOIN chat_messages m ON m.session_id = s.id AND m.seen = 0 AND m.sender_email <> :e
WHERE s.email_lo = :e OR s.email_hi = :e
GROUP BY s.id ORDER BY max(s.last_activity_at) DESC, s.id DESC"""

_MARK_SET = {
    "delivered": "delivered = 1, delivered_at = ?",
    "seen": "seen = 1, seen_at = ?, delivered = 1, delivered_at = coalesce(delivered_at, ?)",
}
_MARK_PENDING = {"delivered": "delivered = 0", "seen": "seen = 0"}

INSERT_OUTBOX = """
INSERT INTO chat_message_outbox (message_id, session_id, seq, event, destination, payload,
                                 next_retry_at, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
INSERT_OUTBOX_ROW = f"""
INSERT INTO chat_message_outbox (message_id, session_id, seq, event, destination, payload,
                                 trace_context, next_retry_at, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {OUTBOX}"""
_PENDING = "processed = 0 AND dead = 0"
CLAIM_CANDIDATES = f"""
SELECT id, session_id FROM chat_message_outbox
WHERE {_PENDING} AND next_retry_at <= ? ORDER BY id LIMIT ?"""
RELEASE = "UPDATE chat_message_outbox SET next_retry_at = ? WHERE processed = 0 AND id IN ({})"
SENT = "UPDATE chat_message_outbox SET processed = 1, sent_at = ? WHERE id IN ({})"
FAILED = """
UPDATE chat_message_outbox
SET retry_count = retry_count + 1, last_error = ?, next_retry_at = ?, dead = ?
WHERE id = ? AND processed = 0"""
OUTBOX_STATS = f"""
SELECT (SELECT count(*) FROM chat_message_outbox WHERE {_PENDING}),
       (SELECT count(*) FROM chat_message_outbox WHERE dead = 1 AND processed = 0)"""
PURGE = """
DELETE FROM chat_message_outbox WHERE id IN (
    SELECT id FROM chat_message_outbox WHERE processed = 1 AND sent_at < ? LIMIT ?)"""


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def with_ids(template: str, lead: Sequence[Any], ids: Sequence[Any]) -> tuple[str, list[Any]]:
    """Fill a template's ``IN ({})`` with one placeholder per id; params = lead + ids."""
    return template.format(_marks(len(ids))), [*lead, *ids]


def split_script(script: str) -> Iterator[str]:
    """The statements of a migration file, one at a time (comments and blanks dropped)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if any(s.strip() and not s.lstrip().startswith("--") for s in buffer.splitlines()):
        raise ValueError("migration ends with an incomplete statement")


def history(
    session_id: str, limit: int, before: int | None, after: int | None
) -> tuple[str, list[Any]]:
    """The history query: newest first, or oldest first from `after` (the caller reverses)."""
    base.check_history_args(limit, before, after)
    where, params = ["session_id = ?"], [cast(Any, session_id)]
    if before is not None:
        where.append("seq < ?")
        params.append(before)
    if after is not None:
        where.append("seq > ?")
        params.append(after)
    order = "DESC" if after is None else "ASC"
    params.append(limit)
    query = f"SELECT {MESSAGE} FROM chat_messages WHERE {' AND '.join(where)}"
    return f"{query} ORDER BY seq {order} LIMIT ?", params


def mark(
    status: ReceiptStatus,
    session_id: str,
    reader: str,
    at: int,
    up_to_seq: int | None,
    ids: Sequence[str],
) -> tuple[str, list[Any]]:
    """The receipt UPDATE: pending rows of others, by seq bound or id; returns (seq, sender)."""
    params: list[Any] = [at] if status == "delivered" else [at, at]
    params += [session_id, reader, -1 if up_to_seq is None else up_to_seq, *ids]
    query = f"""
UPDATE chat_messages SET {_MARK_SET[status]}
WHERE session_id = ? AND sender_email <> ? AND {_MARK_PENDING[status]}
  AND (seq <= ? OR id IN ({_marks(len(ids))}))
RETURNING seq, sender_email"""
    return query, params


def max_seq_of_ids(session_id: str, reader: str, ids: Sequence[str]) -> tuple[str, list[Any]]:
    """The highest seq among the listed messages of others in the session (None if none)."""
    query = f"""
SELECT max(seq) FROM chat_messages
WHERE session_id = ? AND sender_email <> ? AND id IN ({_marks(len(ids))})"""
    return query, [session_id, reader, *ids]


def claim_blockers(sessions: Sequence[Any], ids: Sequence[int]) -> tuple[str, list[Any]]:
    """Lowest unprocessed row id per session among rows this claim did not pick."""
    names = sorted({str(s) for s in sessions})
    query = f"""
SELECT session_id, min(id) FROM chat_message_outbox
WHERE {_PENDING} AND session_id IN ({_marks(len(names))}) AND id NOT IN ({_marks(len(ids))})
GROUP BY session_id"""
    return query, [*names, *ids]


def lease(until: int, ids: Sequence[int]) -> tuple[str, list[Any]]:
    """Move the listed rows' next_retry_at to the end of the lease; returns the rows."""
    query = f"UPDATE chat_message_outbox SET next_retry_at = ? WHERE id IN ({_marks(len(ids))})"
    return f"{query} RETURNING {OUTBOX}", [until, *ids]


# seqs have no gaps, so a session's newest message is the one at next_seq - 1
_SUMMARY = f"""
SELECT {columns(SESSION_COLUMNS, "s")}, s.last_activity_at,
       (SELECT count(*) FROM chat_messages u
        WHERE u.session_id = s.id AND u.seen = 0 AND u.sender_email <> :e),
       {columns(MESSAGE_COLUMNS, "m")}
FROM chat_sessions s
LEFT JOIN chat_messages m ON m.session_id = s.id AND m.seq = s.next_seq - 1
WHERE (s.email_lo = :e OR s.email_hi = :e)"""


def sessions_for(email: str, limit: int, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """The session-list query, keyset-paginated on (last activity, id) descending."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    params: dict[str, Any] = {"e": email, "n": limit}
    query = _SUMMARY
    if cursor is not None:
        at, session_id = base.decode_cursor(cursor)
        params["ca"], params["ci"] = base.to_micros(at), str(session_id)
        query += " AND (s.last_activity_at, s.id) < (:ca, :ci)"
    return query + " ORDER BY s.last_activity_at DESC, s.id DESC LIMIT :n", params


_PEERS = """
SELECT peer FROM (
    SELECT email_hi AS peer, last_activity_at FROM chat_sessions WHERE email_lo = ?
    UNION ALL
    SELECT email_lo, last_activity_at FROM chat_sessions WHERE email_hi = ?
)"""


def peers(email: str, limit: int, among: Sequence[str] | None) -> tuple[str, list[Any]]:
    """The user's chat partners, most recently active first (`Store.peers`)."""
    query, params = _PEERS, [email, email]
    if among is not None:
        query += f" WHERE peer IN ({_marks(len(among))})"
        params += list(among)
    return query + " GROUP BY peer ORDER BY max(last_activity_at) DESC LIMIT ?", [*params, limit]
