-- Email and other providers that can fail for a while: a dispatch whose provider answered with a
-- transient failure goes back to `queued` and its retry waits in a broker delay queue.
-- `provider_attempts` counts the provider tries made so far; the retry message carries the count,
-- so an older message for the same dispatch (redelivered after the retry was scheduled) is
-- recognised and acknowledged without running the dispatch again.
ALTER TABLE dispatches
    ADD COLUMN provider_attempts integer NOT NULL DEFAULT 0,
    -- What the provider answered on success, e.g. an SMTP relay's "250 2.0.0 Ok: queued as 4F2A".
    ADD COLUMN provider_reply text;
