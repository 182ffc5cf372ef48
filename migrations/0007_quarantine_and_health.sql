-- A message is quarantined once: a batch retried after a crash or a failed commit finds its
-- dead letter already stored. Earlier duplicates are folded into their first row.
DELETE FROM dead_letters a USING dead_letters b
    WHERE a.queue = b.queue AND a.message_id = b.message_id AND a.id > b.id;
CREATE UNIQUE INDEX dead_letters_once ON dead_letters (queue, message_id);
CREATE INDEX dead_letters_by_queue ON dead_letters (queue, id);

-- Publish attempts the broker refused (nacked) for an outbox row: past a limit the relay
-- quarantines the row instead of publishing it again.
ALTER TABLE outbox ADD COLUMN publish_failures integer NOT NULL DEFAULT 0;
