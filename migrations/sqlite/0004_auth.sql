-- Who may use Baton: users, their sessions, API tokens, failed logins (for throttling) and the
-- audit log. No secret is stored in a form that can be used: passwords as argon2id hashes
-- (PHC strings), session ids and API tokens as the hex SHA-256 of the value the client holds.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL UNIQUE,
    -- viewer, deployer, admin
    role           TEXT    NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    password_hash  TEXT    NOT NULL,
    -- Who created the account: a user name, a token name, or "cli".
    created_by     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL
);

-- Server-side sessions: the browser holds a random id, Baton only its hash. A session is valid
-- while it is not revoked and not expired; deleting the user deletes its sessions.
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    id_hash     TEXT    NOT NULL UNIQUE,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address     TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_by_user ON sessions (user_id);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('viewer', 'deployer', 'admin')),
    token_hash    TEXT    NOT NULL UNIQUE,
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
-- A name names one live token; a revoked token's name may be used again.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Failed logins inside the throttling window (older rows are pruned as new ones arrive).
CREATE TABLE login_failures (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT    NOT NULL,
    address   TEXT    NOT NULL,
    at        INTEGER NOT NULL
);
CREATE INDEX login_failures_by_name ON login_failures (name, at);
CREATE INDEX login_failures_by_address ON login_failures (address, at);

-- Every mutation and every login, with who, what, when and from where.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    -- A user name, a token name, a webhook delivery ("github delivery 1234"), or "cli".
    actor       TEXT    NOT NULL,
    -- user, token, webhook, cli
    actor_kind  TEXT    NOT NULL,
    -- login, login_failed, logout, user_create, user_delete, token_create, token_revoke,
    -- deploy, pause, resume, abort, rollback, webhook_replay, ...
    action      TEXT    NOT NULL,
    -- What was acted on: a user or token name, a service, a deployment id.
    target      TEXT,
    -- The client's address, when the action came over HTTP.
    address     TEXT,
    detail      TEXT
);
CREATE INDEX audit_log_by_actor ON audit_log (actor, id);
CREATE INDEX audit_log_by_action ON audit_log (action, id);
