-- Everything that happens to a rollout, in order: what the live streams send and replay.
-- An event is written in the same transaction as the change it reports.

CREATE TABLE deployment_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id  INTEGER NOT NULL REFERENCES deployments (id),
    service        TEXT    NOT NULL,
    at             INTEGER NOT NULL,
    -- status, step, control
    kind           TEXT    NOT NULL,
    -- The change as JSON (app::model::Change).
    data           TEXT    NOT NULL
);
CREATE INDEX deployment_events_by_deployment ON deployment_events (deployment_id, id);
