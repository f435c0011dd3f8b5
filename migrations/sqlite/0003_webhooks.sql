-- Every webhook delivery Baton answered, with what it decided and why (the delivery log).
-- Secrets are never stored: no signature or token header is kept, only the raw body of a
-- delivery whose signature held (so it can be replayed).

CREATE TABLE webhook_deliveries (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    service        TEXT    NOT NULL,
    -- github, gitlab, gitea, forgejo, bitbucket-cloud, bitbucket-dc, or unknown
    provider       TEXT    NOT NULL,
    -- The host's event name, as sent (push, Push Hook, repo:push, …).
    event          TEXT,
    -- The host's delivery id (the idempotency key), when it sent one.
    delivery_id    TEXT,
    ref            TEXT,
    sha            TEXT,
    -- processing, deployed, ignored, ping, duplicate, rejected
    verdict        TEXT    NOT NULL,
    -- The HTTP status Baton answered with.
    status         INTEGER NOT NULL,
    reason         TEXT    NOT NULL,
    deployment_id  INTEGER REFERENCES deployments (id),
    -- Set on a row written by an operator's replay of an earlier delivery.
    replay_of      INTEGER REFERENCES webhook_deliveries (id),
    -- 1 when the signature (or token) held.
    verified       INTEGER NOT NULL,
    -- The raw body of a verified delivery; NULL otherwise.
    payload        BLOB,
    received_at    INTEGER NOT NULL
);
CREATE INDEX webhook_deliveries_by_service ON webhook_deliveries (service, id);
-- One first delivery per delivery id: a redelivery finds the earlier row instead of starting
-- anything. Unverified requests never claim an id, so a forged request cannot block the real one;
-- a delivery Baton failed (5xx) releases its id, so the host's retry is processed.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (service, provider, delivery_id)
    WHERE verified = 1 AND replay_of IS NULL AND delivery_id IS NOT NULL
      AND verdict <> 'duplicate' AND status < 500;
