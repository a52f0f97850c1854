-- chatd schema 2: end-to-end encrypted sessions and users' public keys (docs/security.md,
-- End-to-end encrypted sessions). Applied in one transaction by chatd.storage.migrate.

-- A pair has at most one plain and one encrypted session per intent.
ALTER TABLE chat_sessions ADD COLUMN encrypted boolean NOT NULL DEFAULT false;
ALTER TABLE chat_sessions DROP CONSTRAINT chat_sessions_pair_intent;
ALTER TABLE chat_sessions ADD CONSTRAINT chat_sessions_pair_intent_kind
    UNIQUE (profile_lo, profile_hi, intent, encrypted);

-- Every public key a user published (one row per publication, keyed by the agreement key's
-- RFC 7638 thumbprint). The current one has retired_at NULL; retired ones stay readable,
-- since old messages name them.
CREATE TABLE chat_user_keys (
    email         text        NOT NULL,
    kid           text        NOT NULL,
    agreement_jwk text        NOT NULL,
    signing_jwk   text,
    created_at    timestamptz NOT NULL,
    retired_at    timestamptz,
    PRIMARY KEY (email, kid)
);
CREATE UNIQUE INDEX chat_user_keys_current ON chat_user_keys (email) WHERE retired_at IS NULL;
