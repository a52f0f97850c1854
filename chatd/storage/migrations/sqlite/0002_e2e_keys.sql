-- chatd schema 2: end-to-end encrypted sessions and users' public keys, SQLite flavour.
-- SQLite cannot drop a table constraint, so chat_sessions is rebuilt (SQLite's documented
-- procedure: the migrator runs this with foreign keys off and checks them before COMMIT, so
-- dropping the old table neither cascades to messages nor leaves dangling references).

CREATE TABLE chat_sessions_new (
    id               TEXT    PRIMARY KEY,
    intent           TEXT    NOT NULL,
    profile_lo       TEXT    NOT NULL,
    email_lo         TEXT    NOT NULL,
    name_lo          TEXT    NOT NULL,
    profile_hi       TEXT    NOT NULL,
    email_hi         TEXT    NOT NULL,
    name_hi          TEXT    NOT NULL,
    next_seq         INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    -- a pair has at most one plain and one encrypted session per intent
    encrypted        INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT chat_sessions_pair_intent_kind UNIQUE (profile_lo, profile_hi, intent, encrypted)
);
INSERT INTO chat_sessions_new (id, intent, profile_lo, email_lo, name_lo, profile_hi, email_hi,
                               name_hi, next_seq, created_at, last_activity_at, encrypted)
SELECT id, intent, profile_lo, email_lo, name_lo, profile_hi, email_hi, name_hi, next_seq,
       created_at, last_activity_at, 0
FROM chat_sessions;
DROP TABLE chat_sessions;
ALTER TABLE chat_sessions_new RENAME TO chat_sessions;
CREATE INDEX chat_sessions_email_lo ON chat_sessions (email_lo, last_activity_at DESC, id DESC);
CREATE INDEX chat_sessions_email_hi ON chat_sessions (email_hi, last_activity_at DESC, id DESC);

-- Every public key a user published; the current one has retired_at NULL.
CREATE TABLE chat_user_keys (
    email         TEXT    NOT NULL,
    kid           TEXT    NOT NULL,
    agreement_jwk TEXT    NOT NULL,
    signing_jwk   TEXT,
    created_at    INTEGER NOT NULL,
    retired_at    INTEGER,
    PRIMARY KEY (email, kid)
);
CREATE UNIQUE INDEX chat_user_keys_current ON chat_user_keys (email) WHERE retired_at IS NULL;
