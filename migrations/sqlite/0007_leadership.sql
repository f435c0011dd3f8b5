-- Which replica leads: one row, a lease that the leader renews and any replica may take once it
-- has expired. Times are the database's own clock (Unix milliseconds), so replicas' clocks do
-- not matter. `term` grows by one at each change of hands (or a new lease after one lapsed);
-- every write a leader's rollout worker makes checks holder, term and expiry in its own
-- transaction (the fence). On SQLite one Baton leads alone and this table stays empty; it
-- exists so both databases have the same schema.
CREATE TABLE leadership (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    holder       TEXT    NOT NULL,
    term         INTEGER NOT NULL,
    acquired_at  INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
