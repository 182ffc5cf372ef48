-- Retention deletes a dispatch's provider events with it: find them without a scan.
CREATE INDEX provider_events_by_dispatch ON provider_events (dispatch_id);
-- Dead letters and batch replies past retention are found by age.
CREATE INDEX dead_letters_by_time ON dead_letters (created_at);
CREATE INDEX batch_submissions_by_time ON batch_submissions (created_at);
