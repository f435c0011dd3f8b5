-- Baton's state: rollouts, their steps and their events, and what runs on each backend.
-- Times are Unix milliseconds (INTEGER), so the same schema works on PostgreSQL (BIGINT).

CREATE TABLE deployments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    service       TEXT    NOT NULL,
    from_version  TEXT,
    to_version    TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    trigger       TEXT    NOT NULL,
    requested_by  TEXT,
    reason        TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX deployments_by_service ON deployments (service, id);
CREATE INDEX deployments_by_status ON deployments (status, id);
