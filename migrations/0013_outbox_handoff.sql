-- A writer hands the outbox rows it just committed to its own process's relay in memory, which
-- publishes them and then deletes them by id: no transaction and no locking read per relay round.
-- Such a row is written with `relay_after` a short grace ahead, and the relays' sweep (which
-- takes rows with `FOR UPDATE SKIP LOCKED`, as before) leaves it alone until then, so it is
-- published once in the normal case and by the sweep when its process could not (a crash, a lost
-- broker connection). Rows written without a hand-off (requeues from the status API or the CLI)
-- are due at once.
ALTER TABLE outbox ADD COLUMN relay_after timestamptz NOT NULL DEFAULT now();
