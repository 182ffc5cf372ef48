-- Each subscription's endpoint health, folded from the attempts in the commit that records them.
-- One row per subscription; a deliverer locks the rows of a batch's subscriptions, so the state
-- changes (and the operational events they emit) happen once however many deliverers run.
CREATE TABLE endpoint_health (
    webhook_id            uuid PRIMARY KEY REFERENCES webhook_subscriptions (id),
    account_id            uuid NOT NULL,
    attempts              bigint NOT NULL DEFAULT 0,
    success_rate          double precision NOT NULL DEFAULT 1,
    last_success_at       timestamptz,
    last_error_at         timestamptz,
    last_error            text,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    failing_since         timestamptz,
    breaker_open          boolean NOT NULL DEFAULT false,
    updated_at            timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

-- Requests per second a subscription's endpoint receives from each deliverer (NULL: no limit).
ALTER TABLE webhook_subscriptions ADD COLUMN rate_limit integer CHECK (rate_limit > 0);
-- Why it was disabled: `410 Gone`, or failing for longer than `delivery.disable_failing_after`.
ALTER TABLE webhook_subscriptions ADD COLUMN disabled_reason text;
