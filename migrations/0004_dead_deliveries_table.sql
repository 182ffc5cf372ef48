-- Dead deliveries are listed from a table of their own. The partial index this replaces
-- (deliveries (updated_at) WHERE status = 'dead') named the two columns every attempt changes,
-- so no update of a delivery could be HOT: each attempt also wrote a new entry into every index
-- of deliveries.
CREATE TABLE dead_deliveries (
    delivery_id  uuid PRIMARY KEY,
    dead_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_deliveries_by_time ON dead_deliveries (dead_at DESC);

INSERT INTO dead_deliveries (delivery_id, dead_at)
    SELECT id, updated_at FROM deliveries WHERE status = 'dead';

DROP INDEX IF EXISTS deliveries_dead;
