-- chatd schema 1 (docs/architecture.md, Storage and the outbox), SQLite flavour. Applied in one transaction by chatd.storage.migrate.
-- Timestamps are integer microseconds since the Unix epoch (UTC); uuids are canonical text;
-- booleans are 0/1.

CREATE TABLE chat_sessions (
    id               TEXT    PRIMARY KEY,
    intent           TEXT    NOT NULL,
    -- participants in canonical order (sorted by profile id): one row per pair + intent
    profile_lo       TEXT    NOT NULL,
    email_lo         TEXT    NOT NULL,
    name_lo          TEXT    NOT NULL,
    profile_hi       TEXT    NOT NULL,
    email_hi         TEXT    NOT NULL,
    name_hi          TEXT    NOT NULL,
    next_seq         INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    CONSTRAINT chat_sessions_pair_intent UNIQUE (profile_lo, profile_hi, intent)
);
CREATE INDEX chat_sessions_email_lo ON chat_sessions (email_lo, last_activity_at DESC, id DESC);
CREATE INDEX chat_sessions_email_hi ON chat_sessions (email_hi, last_activity_at DESC, id DESC);

CREATE TABLE chat_messages (
    id                  TEXT    PRIMARY KEY,
    session_id          TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    sender_id           TEXT    NOT NULL,
    sender_email        TEXT    NOT NULL,
    sender_display_name TEXT    NOT NULL,
    content             TEXT    NOT NULL,
    client_msg_id       TEXT    NOT NULL,
    sent_at             INTEGER NOT NULL,
    delivered           INTEGER NOT NULL DEFAULT 0,
    seen                INTEGER NOT NULL DEFAULT 0,
    delivered_at        INTEGER,
    seen_at             INTEGER,
    CONSTRAINT chat_messages_session_seq UNIQUE (session_id, seq),
    CONSTRAINT chat_messages_sender_client_id UNIQUE (sender_email, client_msg_id)
);
CREATE INDEX chat_messages_unseen ON chat_messages (session_id, seq) WHERE seen = 0;

CREATE TABLE chat_message_outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    REFERENCES chat_messages (id) ON DELETE CASCADE,
    session_id    TEXT    NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    event         TEXT    NOT NULL,
    destination   TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    processed     INTEGER NOT NULL DEFAULT 0,
    dead          INTEGER NOT NULL DEFAULT 0,
    retry_count   INTEGER NOT NULL DEFAULT 0,
    next_retry_at INTEGER NOT NULL,
    last_error    TEXT,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER
);
CREATE INDEX chat_message_outbox_pending ON chat_message_outbox (id)
    WHERE processed = 0 AND dead = 0;
CREATE INDEX chat_message_outbox_session_pending ON chat_message_outbox (session_id, id)
    WHERE processed = 0 AND dead = 0;
