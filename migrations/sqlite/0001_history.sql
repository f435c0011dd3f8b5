-- Baton's state: rollouts, their steps, and the version each backend runs.
-- Times are Unix milliseconds (INTEGER), so the same schema works on PostgreSQL (BIGINT).

CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    service       TEXT    NOT NULL,
    from_version  TEXT,
    to_version    TEXT    NOT NULL,
    -- queued, running, succeeded, failed, rolled_back, cancelled
    status        TEXT    NOT NULL,
    trigger       TEXT    NOT NULL,
    requested_by  TEXT,
    -- Why it failed or was rolled back, in words.
    reason        TEXT,
    -- The engine's state as JSON, written before each side effect so a restart resumes.
    state         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX deployments_by_service ON deployments (service, id);
CREATE INDEX deployments_by_status ON deployments (status, id);

CREATE TABLE deployment_steps (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id  INTEGER NOT NULL REFERENCES deployments (id),
    backend        TEXT,
    step           TEXT    NOT NULL,
    rollback       INTEGER NOT NULL,
    version        TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    -- ok, failed, timed_out, interrupted (Baton stopped while the step ran)
    outcome        TEXT,
    detail         TEXT
);
CREATE INDEX deployment_steps_by_deployment ON deployment_steps (deployment_id, id);

CREATE TABLE backend_versions (
    service     TEXT    NOT NULL,
    backend     TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (service, backend)
);
