-- A verified delivery's body is claimed once per service, as its delivery id is: the same signed
-- body sent again under a new or missing delivery id, or as another git host with the same HMAC,
-- finds the earlier entry instead of starting anything.
--
-- The SHA-256 (lowercase hex) of the body a row keeps (`payload`): set exactly when the body is
-- kept, so a verified first delivery. (On SQLite, rows from before this migration get theirs
-- when Baton starts; a PostgreSQL database never had such rows.)
ALTER TABLE webhook_deliveries ADD COLUMN body_sha256 TEXT;

-- The same rows claim a body as claim a delivery id (0003's webhook_deliveries_once): verified,
-- not a replay, not a redelivery, and not failed by Baton (a 5xx releases it for the retry).
CREATE UNIQUE INDEX webhook_deliveries_body_once ON webhook_deliveries (service, body_sha256)
    WHERE verified = 1 AND replay_of IS NULL AND body_sha256 IS NOT NULL
      AND verdict <> 'duplicate' AND status < 500;

-- Unverified deliveries are pruned to each service's newest after every one logged: this finds
-- them without walking the service's verified rows.
CREATE INDEX webhook_deliveries_unverified ON webhook_deliveries (service, id) WHERE verified = 0;
