-- Writers now wake their own process's relay after committing outbox rows (and the requeue
-- paths, which run no relay, NOTIFY explicitly). The per-statement NOTIFY trigger made every
-- inserting commit take PostgreSQL's cluster-wide notification lock and woke every relay of the
-- deployment, most of which then ran an empty round.
DROP TRIGGER IF EXISTS outbox_inserted ON outbox;
DROP FUNCTION IF EXISTS notify_outbox();
