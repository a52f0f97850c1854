-- chatd schema 1 (docs/architecture.md, Storage and the outbox). Applied in one transaction by chatd.storage.migrate.

CREATE TABLE chat_sessions (
    id               uuid PRIMARY KEY,
    intent           text        NOT NULL,
    -- participants in canonical order (sorted by profile id): one row per pair + intent
    profile_lo       text        NOT NULL,
    email_lo         text        NOT NULL,
    name_lo          text        NOT NULL,
    profile_hi       text        NOT NULL,
    email_hi         text        NOT NULL,
    name_hi          text        NOT NULL,
    -- the seq the next message gets; bumped with a row lock so seqs never have gaps
    next_seq         bigint      NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL,
    -- newest message time (or creation time): the order of a user's session list
    last_activity_at timestamptz NOT NULL,
    CONSTRAINT chat_sessions_pair_intent UNIQUE (profile_lo, profile_hi, intent)
);
CREATE INDEX chat_sessions_email_lo ON chat_sessions (email_lo, last_activity_at DESC, id DESC);
CREATE INDEX chat_sessions_email_hi ON chat_sessions (email_hi, last_activity_at DESC, id DESC);

CREATE TABLE chat_messages (
    id                  uuid PRIMARY KEY,
    session_id          uuid        NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq                 bigint      NOT NULL,
    sender_id           text        NOT NULL,
    sender_email        text        NOT NULL,
    sender_display_name text        NOT NULL,
    content             text        NOT NULL,
    client_msg_id       text        NOT NULL,
    sent_at             timestamptz NOT NULL,
    delivered           boolean     NOT NULL DEFAULT false,
    seen                boolean     NOT NULL DEFAULT false,
    delivered_at        timestamptz,
    seen_at             timestamptz,
    CONSTRAINT chat_messages_session_seq UNIQUE (session_id, seq),
    CONSTRAINT chat_messages_sender_client_id UNIQUE (sender_email, client_msg_id)
);
-- unread = not seen; the partial index stays small because most messages end up seen
CREATE INDEX chat_messages_unseen ON chat_messages (session_id, seq) WHERE NOT seen;

CREATE TABLE chat_message_outbox (
    id            bigserial   PRIMARY KEY,
    message_id    uuid        REFERENCES chat_messages (id) ON DELETE CASCADE,
    session_id    uuid        NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq           bigint      NOT NULL,
    event         text        NOT NULL,
    destination   text        NOT NULL,
    -- json, not jsonb: the body is published byte for byte as written
    payload       json        NOT NULL,
    processed     boolean     NOT NULL DEFAULT false,
    dead          boolean     NOT NULL DEFAULT false,
    retry_count   integer     NOT NULL DEFAULT 0,
    next_retry_at timestamptz NOT NULL,
    last_error    text,
    created_at    timestamptz NOT NULL,
    sent_at       timestamptz
);
CREATE INDEX chat_message_outbox_pending ON chat_message_outbox (id)
    WHERE NOT processed AND NOT dead;
CREATE INDEX chat_message_outbox_session_pending ON chat_message_outbox (session_id, id)
    WHERE NOT processed AND NOT dead;
