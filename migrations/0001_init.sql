-- Dispatcher schema, version 1.

CREATE TABLE accounts (
    id                       uuid PRIMARY KEY,
    email                    text NOT NULL UNIQUE,
    password_hash            text NOT NULL,
    webhook_secret           text NOT NULL,
    -- The secret replaced by the last rotation stays valid (and signed with) until this time.
    previous_webhook_secret  text,
    previous_secret_until    timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION notify_account_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('dispatcher_accounts', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- API processes drop cached credentials of an account whose password changed.
CREATE TRIGGER account_password_changed AFTER UPDATE OF password_hash ON accounts
    FOR EACH ROW WHEN (OLD.password_hash IS DISTINCT FROM NEW.password_hash)
    EXECUTE FUNCTION notify_account_changed();

CREATE TABLE templates (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id),
    name        text NOT NULL,
    format      text NOT NULL CHECK (format IN ('html', 'text', 'markdown', 'json', 'csv')),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX templates_by_account ON templates (account_id, created_at DESC, id DESC);

CREATE TABLE dispatches (
    id                    uuid PRIMARY KEY,
    account_id            uuid NOT NULL REFERENCES accounts (id),
    status                text NOT NULL DEFAULT 'queued'
                          CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    template_id           uuid REFERENCES templates (id),
    -- The template as it was at submission, so the worker needs no second read.
    template_format       text NOT NULL,
    template_body         text NOT NULL,
    data                  jsonb NOT NULL,
    provider              jsonb NOT NULL,
    callback_url          text,
    metadata              jsonb,
    idempotency_key       text,
    request_hash          bytea,
    -- The 202 body first returned, replayed for a repeated Idempotency-Key.
    idempotency_response  jsonb,
    -- Set for sync submissions: finishing the dispatch then NOTIFYs the waiting ingest.
    notify_on_finish      boolean NOT NULL DEFAULT false,
    processing_attempts   integer NOT NULL DEFAULT 0,
    queued_at             timestamptz NOT NULL,
    started_at            timestamptz,
    completed_at          timestamptz,
    result                bytea,
    result_content_type   text,
    error                 jsonb,
    -- What the provider last reported (inbound provider callbacks), and when it happened.
    provider_status       text,
    provider_status_at    timestamptz
) WITH (
    -- Every dispatch is updated twice (claim, finish): free space in each page lets those be HOT
    -- updates (no index churn), and frequent vacuuming keeps the dead versions from piling up.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE UNIQUE INDEX dispatches_idempotency ON dispatches (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX dispatches_by_account ON dispatches (account_id, queued_at DESC, id DESC);

CREATE FUNCTION notify_dispatch_finished() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('dispatcher_finished', NEW.id::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER dispatch_finished AFTER UPDATE OF status ON dispatches
    FOR EACH ROW
    WHEN (NEW.notify_on_finish AND NEW.status IN ('completed', 'failed') AND OLD.status <> NEW.status)
    EXECUTE FUNCTION notify_dispatch_finished();

-- Transactional outbox: rows are written in the same transaction as the state they announce,
-- published by a relay with publisher confirms, and deleted in the relay's transaction once the
-- broker confirmed them (a row exists exactly as long as its message is not known to be sent).
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    message_id   uuid NOT NULL,
    routing_key  text NOT NULL,
    payload      bytea NOT NULL,
    headers      jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
) WITH (
    -- A queue table: rows live for milliseconds, so vacuum it often.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 0
);

CREATE FUNCTION notify_outbox() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('dispatcher_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- One notification per inserting statement wakes the relays at commit time.
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

CREATE TABLE webhook_subscriptions (
    id            uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (id),
    event         text NOT NULL,
    callback_url  text NOT NULL,
    description   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,
    deleted_at    timestamptz
);
CREATE INDEX webhook_subscriptions_by_account ON webhook_subscriptions (account_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- One row per (outcome event, endpoint). Its id is derived from both, so a redelivered event finds
-- the same row and the same webhook-id.
CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id),
    dispatch_id      uuid NOT NULL REFERENCES dispatches (id),
    event_id         uuid NOT NULL,
    webhook_id       uuid REFERENCES webhook_subscriptions (id),
    url              text NOT NULL,
    msg_id           text NOT NULL,
    event_type       text NOT NULL,
    payload          bytea NOT NULL,
    -- W3C trace context of the outcome event, sent on every attempt.
    traceparent      text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'succeeded', 'failed', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Bumped when a delivery is sent again on request (redeliver, dlq replay): a new round.
    generation       integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);
CREATE INDEX deliveries_by_dispatch ON deliveries (dispatch_id);
CREATE INDEX deliveries_dead ON deliveries (updated_at) WHERE status = 'dead';

CREATE TABLE delivery_attempts (
    id               uuid PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES deliveries (id),
    dispatch_id      uuid NOT NULL,
    account_id       uuid NOT NULL,
    attempt          integer NOT NULL,
    generation       integer NOT NULL DEFAULT 0,
    status           text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    response_status  integer,
    error            text,
    duration_ms      integer NOT NULL,
    attempted_at     timestamptz NOT NULL,
    next_attempt_at  timestamptz
);
CREATE INDEX delivery_attempts_by_dispatch ON delivery_attempts (dispatch_id, attempted_at);
-- At most one success per delivery round, however often an event is redelivered.
CREATE UNIQUE INDEX delivery_attempts_one_success ON delivery_attempts (delivery_id, generation)
    WHERE status = 'succeeded';

-- Messages no consumer could handle (unparseable, or past the delivery limit), kept with the reason.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    queue        text NOT NULL,
    message_id   text,
    reason       text NOT NULL,
    body         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Inbound provider callbacks, stored before they are answered and applied by a worker.
CREATE TABLE provider_events (
    provider     text NOT NULL,
    event_id     text NOT NULL,
    dispatch_id  uuid NOT NULL,
    type         text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    body         bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied_at   timestamptz,
    PRIMARY KEY (provider, event_id)
);
