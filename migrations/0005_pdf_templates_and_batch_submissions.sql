-- Templates may be Typst markup rendered to PDF.
ALTER TABLE templates DROP CONSTRAINT templates_format_check;
ALTER TABLE templates ADD CONSTRAINT templates_format_check
    CHECK (format IN ('html', 'text', 'markdown', 'json', 'csv', 'pdf'));

-- One row per batch submission (`POST /v1/dispatches/batch`) made with an Idempotency-Key: the
-- hash of its body and the answer a repeat gets. Written in the transaction that writes the
-- batch's dispatches, so a key exists exactly when its batch was accepted.
CREATE TABLE batch_submissions (
    account_id       uuid NOT NULL,
    idempotency_key  text NOT NULL,
    request_hash     bytea NOT NULL,
    response         jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, idempotency_key)
);
