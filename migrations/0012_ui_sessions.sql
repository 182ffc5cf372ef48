-- Dashboard sessions (`/ui/`). The cookie carries a random 256-bit id; only its SHA-256 is stored,
-- so a copy of this table does not let anyone sign in. A session ends when it has been idle for
-- `ui.session_idle`, when it is older than `ui.session_max`, or at sign-out (its row is deleted).
CREATE TABLE ui_sessions (
    id_hash      bytea PRIMARY KEY,
    account_id   uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX ui_sessions_account_idx ON ui_sessions (account_id);
CREATE INDEX ui_sessions_last_seen_idx ON ui_sessions (last_seen_at);
