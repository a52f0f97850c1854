"""The SQL text of the PostgreSQL backend, kept apart from the code that drives it.

Plain strings with psycopg placeholders; the few statements that vary (history bounds, receipt
status, session cursor) are assembled here from fixed fragments only, never from input.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
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
OUTBOX = columns(OUTBOX_COLUMNS).replace("payload", "payload::text")

INSERT_SESSION = f"""
INSERT INTO chat_sessions (id, intent, profile_lo, email_lo, name_lo, profile_hi, email_hi,
                           name_hi, created_at, last_activity_at, encrypted)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (profile_lo, profile_hi, intent, encrypted) DO NOTHING
RETURNING {SESSION}"""
SESSION_BY_PAIR = f"""
SELECT {SESSION} FROM chat_sessions
WHERE profile_lo = %s AND profile_hi = %s AND intent = %s AND encrypted = %s"""
# (peer, session id) of each of a user's sessions: whom a key change is announced to.
PEER_SESSIONS = """
SELECT CASE WHEN email_lo = %s THEN email_hi ELSE email_lo END, id FROM chat_sessions
WHERE email_lo = %s OR email_hi = %s ORDER BY id"""
SHARES_SESSION = """
SELECT 1 FROM chat_sessions
WHERE (email_lo = %s AND email_hi = %s) OR (email_lo = %s AND email_hi = %s) LIMIT 1"""
KEY = f"SELECT {KEY_COLUMNS_SQL} FROM chat_user_keys WHERE email = %s AND kid = %s"
CURRENT_KEY = (
    f"SELECT {KEY_COLUMNS_SQL} FROM chat_user_keys WHERE email = %s AND retired_at IS NULL"
)
COUNT_KEYS = "SELECT count(*) FROM chat_user_keys WHERE email = %s"
RETIRE_KEY = "UPDATE chat_user_keys SET retired_at = %s WHERE email = %s AND retired_at IS NULL"
INSERT_KEY = """
INSERT INTO chat_user_keys (email, kid, agreement_jwk, signing_jwk, created_at)
VALUES (%s, %s, %s, %s, %s)"""
SESSION_BY_ID = f"SELECT {SESSION} FROM chat_sessions WHERE id = %s"
LOCK_SESSION = "SELECT next_seq FROM chat_sessions WHERE id = %s FOR UPDATE"
# A batch's sessions, locked in id order; then their next_seq moved past the batch's messages.
LOCK_SESSIONS = f"SELECT {SESSION} FROM chat_sessions WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
# The batch statements' arrays go in binary (%b): in text form psycopg quotes each element
# with a regex in Python, 57 us per JSON payload, in the store's worker thread holding the
# GIL (a tenth of a core at 600 msg/s); in binary, 0.4 us.
BUMP_SESSIONS = """
UPDATE chat_sessions s SET next_seq = v.next_seq,
                           last_activity_at = GREATEST(s.last_activity_at, v.at)
FROM unnest(%b::uuid[], %b::bigint[], %b::timestamptz[]) AS v(id, next_seq, at)
WHERE s.id = v.id"""
# The batch's repeats: messages its senders already stored under the same client ids.
REPEATS = f"""
SELECT {MESSAGE} FROM chat_messages
WHERE (sender_email, client_msg_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))"""
# Whole-batch inserts from parallel arrays: one statement text whatever the batch size (so
# psycopg prepares it once), rows inserted -- and outbox ids drawn -- in array order.
INSERT_MESSAGES = """
INSERT INTO chat_messages (id, session_id, seq, sender_id, sender_email, sender_display_name,
                           content, client_msg_id, sent_at)
SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[],
                     %b::text[], %b::text[], %b::timestamptz[])
ON CONFLICT (sender_email, client_msg_id) DO NOTHING
RETURNING id"""
INSERT_OUTBOX_ROWS = f"""
INSERT INTO chat_message_outbox (message_id, session_id, seq, event, destination, payload,
                                 trace_context, next_retry_at, created_at)
SELECT m, s, q, e, d, p::json, t, %s, %s
FROM unnest(%b::uuid[], %b::uuid[], %b::bigint[], %b::text[], %b::text[], %b::text[],
            %b::text[])
     AS r(m, s, q, e, d, p, t)
RETURNING {OUTBOX}"""

MESSAGE_BY_CLIENT_ID = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE sender_email = %s AND client_msg_id = %s"
)
MESSAGES_BY_CLIENT_IDS = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE sender_email = %s AND client_msg_id = ANY(%s)"
)
MESSAGES_AFTER = (
    f"SELECT {MESSAGE} FROM chat_messages WHERE session_id = %s AND seq > %s ORDER BY seq LIMIT %s"
)
_UNSEEN = "session_id = %s AND NOT seen AND sender_email <> %s"
UNREAD = f"SELECT {MESSAGE} FROM chat_messages WHERE {_UNSEEN} ORDER BY seq LIMIT %s"
UNREAD_COUNT = f"SELECT count(*) FROM chat_messages WHERE {_UNSEEN}"
UNREAD_TOTALS = """
SELECT s.id, count(*) FROM chat_sessions s
JOIN chat_messages m ON m.session_id = s.id AND NOT m.seen AND m.sender_email <> %(e)s
WHERE s.email_lo = %(e)s OR s.email_hi = %(e)s
GROUP BY s.id ORDER BY max(s.last_activity_at) DESC, s.id DESC"""

_MARK_SET = {
    "delivered": "delivered = true, delivered_at = %(at)s",
    "seen": "seen = true, seen_at = %(at)s, delivered = true,"
    " delivered_at = COALESCE(delivered_at, %(at)s)",
}
_MARK_PENDING = {"delivered": "NOT delivered", "seen": "NOT seen"}
MAX_SEQ_OF_IDS = """
SELECT max(seq) FROM chat_messages
WHERE session_id = %(s)s AND sender_email <> %(r)s AND id = ANY(%(ids)s)"""

INSERT_OUTBOX = """
INSERT INTO chat_message_outbox (message_id, session_id, seq, event, destination, payload,
                                 next_retry_at, created_at)
VALUES (%s, %s, %s, %s, %s, %s::json, %s, %s)"""
_PENDING = "NOT processed AND NOT dead"
# One statement, one round trip: lock up to `limit` due rows (skipping rows other claimers
# hold), then keep, per session, only those before the session's first pending row we could not
# take (leased elsewhere, backing off, or locked) -- `base.claimable`'s rule -- and lease them.
CLAIM = f"""
WITH cand AS (
    SELECT id, session_id FROM chat_message_outbox
    WHERE {_PENDING} AND next_retry_at <= %(now)s ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED),
blocked AS (
    SELECT session_id, min(id) AS first FROM chat_message_outbox
    WHERE {_PENDING} AND session_id IN (SELECT session_id FROM cand)
      AND id NOT IN (SELECT id FROM cand)
    GROUP BY session_id)
UPDATE chat_message_outbox t SET next_retry_at = %(until)s
FROM cand LEFT JOIN blocked b ON b.session_id = cand.session_id
WHERE t.id = cand.id AND (b.first IS NULL OR cand.id < b.first)
RETURNING {", ".join(f"t.{c}" for c in OUTBOX_COLUMNS).replace("t.payload", "t.payload::text")}"""
RELEASE = "UPDATE chat_message_outbox SET next_retry_at = %s WHERE id = ANY(%s) AND NOT processed"
SENT = "UPDATE chat_message_outbox SET processed = true, sent_at = %s WHERE id = ANY(%s)"
FAILED = """
UPDATE chat_message_outbox
SET retry_count = retry_count + 1, last_error = %s, next_retry_at = %s, dead = %s
WHERE id = %s AND NOT processed"""
OUTBOX_STATS = f"""
SELECT (SELECT count(*) FROM chat_message_outbox WHERE {_PENDING}),
       (SELECT count(*) FROM chat_message_outbox WHERE dead AND NOT processed)"""
PURGE = """
DELETE FROM chat_message_outbox WHERE id IN (
    SELECT id FROM chat_message_outbox WHERE processed AND sent_at < %s LIMIT %s)"""


def history(
    session_id: uuid.UUID, limit: int, before: int | None, after: int | None
) -> tuple[str, list[Any]]:
    """The history query: newest first, or oldest first from `after` (the caller reverses)."""
    base.check_history_args(limit, before, after)
    where, params = ["session_id = %s"], [cast(Any, session_id)]
    if before is not None:
        where.append("seq < %s")
        params.append(before)
    if after is not None:
        where.append("seq > %s")
        params.append(after)
    order = "DESC" if after is None else "ASC"
    params.append(limit)
    sql = f"SELECT {MESSAGE} FROM chat_messages WHERE {' AND '.join(where)}"
    return f"{sql} ORDER BY seq {order} LIMIT %s", params


def mark(status: ReceiptStatus) -> str:
    """The receipt UPDATE: pending rows of others, by seq bound or id; returns (seq, sender)."""
    return f"""
UPDATE chat_messages SET {_MARK_SET[status]}
WHERE session_id = %(s)s AND sender_email <> %(r)s AND {_MARK_PENDING[status]}
  AND (seq <= %(up)s OR id = ANY(%(ids)s))
RETURNING seq, sender_email"""


# seqs have no gaps, so a session's newest message is the one at next_seq - 1
_SUMMARY = f"""
SELECT {columns(SESSION_COLUMNS, "s")}, s.last_activity_at,
       (SELECT count(*) FROM chat_messages u
        WHERE u.session_id = s.id AND NOT u.seen AND u.sender_email <> %(e)s),
       {columns(MESSAGE_COLUMNS, "m")}
FROM chat_sessions s
LEFT JOIN chat_messages m ON m.session_id = s.id AND m.seq = s.next_seq - 1
WHERE (s.email_lo = %(e)s OR s.email_hi = %(e)s)"""


def sessions_for(email: str, limit: int, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """The session-list query, keyset-paginated on (last activity, id) descending."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    params: dict[str, Any] = {"e": email, "n": limit}
    sql = _SUMMARY
    if cursor is not None:
        params["ca"], params["ci"] = base.decode_cursor(cursor)
        sql += " AND (s.last_activity_at, s.id) < (%(ca)s, %(ci)s)"
    return sql + " ORDER BY s.last_activity_at DESC, s.id DESC LIMIT %(n)s", params


_PEERS = """
SELECT peer FROM (
    SELECT email_hi AS peer, last_activity_at FROM chat_sessions WHERE email_lo = %(e)s
    UNION ALL
    SELECT email_lo, last_activity_at FROM chat_sessions WHERE email_hi = %(e)s
) AS mine"""


def peers(email: str, limit: int, among: Sequence[str] | None) -> tuple[str, dict[str, Any]]:
    """The user's chat partners, most recently active first (`Store.peers`)."""
    params: dict[str, Any] = {"e": email, "n": limit}
    sql = _PEERS
    if among is not None:
        params["among"] = list(among)
        sql += " WHERE peer = ANY(%(among)s)"
    return sql + " GROUP BY peer ORDER BY max(last_activity_at) DESC LIMIT %(n)s", params
