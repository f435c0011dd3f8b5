-- Every attempt to send a notification (`[[notify]]`): what, where (the variable that holds the
-- URL, never the URL, which is a secret), and how it ended. Admins read it newest first.
CREATE TABLE notification_attempts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- When the attempt ended, Unix milliseconds.
    at             INTEGER NOT NULL,
    service        TEXT    NOT NULL,
    deployment_id  INTEGER NOT NULL REFERENCES deployments (id),
    -- started, succeeded, failed, rolled_back, soak_tripped
    event          TEXT    NOT NULL,
    -- slack, webhook
    kind           TEXT    NOT NULL,
    url_env        TEXT    NOT NULL,
    -- 1 for the first attempt.
    attempt        INTEGER NOT NULL,
    -- The receiver's HTTP status, when it answered.
    status         INTEGER,
    error          TEXT,
    -- delivered, will_retry, gave_up
    verdict        TEXT    NOT NULL
);
CREATE INDEX notification_attempts_by_deployment ON notification_attempts (deployment_id);
