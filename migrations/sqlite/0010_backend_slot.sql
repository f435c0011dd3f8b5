-- Which of a backend's two addresses its current instance runs on ("address" or
-- "surge_address"): a surge rollout starts the next version on the other one and records the
-- switch once the new instance is UP, so a restarted Baton adopts the right one.
ALTER TABLE backend_versions ADD COLUMN slot TEXT NOT NULL DEFAULT 'address';
