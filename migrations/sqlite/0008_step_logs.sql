-- The end of a backend's log, read when a step on it failed: what the rollout page shows
-- (to deployers and admins) under the failed step, kept with the history.
CREATE TABLE step_logs (
    step_id      INTEGER NOT NULL PRIMARY KEY REFERENCES deployment_steps (id),
    deployment_id INTEGER NOT NULL REFERENCES deployments (id),
    backend      TEXT    NOT NULL,
    -- Where the lines were read: a path, with the host when not on Baton's machine.
    source       TEXT    NOT NULL,
    -- The lines, oldest first, as a JSON array of strings.
    lines        TEXT    NOT NULL,
    captured_at  INTEGER NOT NULL
);
CREATE INDEX step_logs_by_deployment ON step_logs (deployment_id, step_id);
