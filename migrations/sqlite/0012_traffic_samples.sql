-- What each backend served while a rollout ran, sampled from HAProxy's counters by the leader's
-- rollout worker: the rollout page's traffic chart, kept with the history. One row per sample,
-- every backend in it, so a rollout of many backends costs one short row per sample.
CREATE TABLE traffic_samples (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id  INTEGER NOT NULL REFERENCES deployments (id),
    -- When the sample was taken, Unix milliseconds (the clock of the step rows).
    at             INTEGER NOT NULL,
    -- How long it covers: since the previous sample, in milliseconds.
    span_ms        INTEGER NOT NULL,
    -- Each backend's requests and 5xx responses in that span, summed over HAProxy's nodes, as
    -- a JSON array of [backend, requests, errors_5xx].
    counts         TEXT    NOT NULL
);
CREATE INDEX traffic_samples_by_deployment ON traffic_samples (deployment_id, id);
