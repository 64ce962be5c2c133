-- Delivery reports (issue 22): a provider that accepted a message (`sent`) later reports it
-- `delivered` or `undelivered` (POST /v1/providers/{name}/reports, app/deliveries/reports.py).
-- `delivered` sets delivered_at; `undelivered` makes the delivery `undelivered`; either is also an
-- attempt row (outcome `delivered` / `undelivered`) so the history and the evidence show it.
-- A wider CHECK (more statuses) is an expand, not a contract: the previous release writes only
-- values it already allowed. The guard counts every DROP CONSTRAINT, so the marker says so:
-- contract: after 96e4fbb
ALTER TABLE deliveries ADD COLUMN delivered_at timestamptz;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'expired', 'undelivered')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_status_check;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_outcome_check,
    ADD CONSTRAINT delivery_attempts_outcome_check
        CHECK (outcome IN ('sent', 'retry', 'failed', 'skipped', 'held', 'expired', 'delivered', 'undelivered'))
        NOT VALID;
ALTER TABLE delivery_attempts VALIDATE CONSTRAINT delivery_attempts_outcome_check;

-- A report names the provider's message id: found through this index, not a scan of deliveries.
CREATE INDEX deliveries_provider_message ON deliveries (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- `fallback: [{channel: sms, when: {email_not_delivered_within: PT2M}}]`: one row per watched
-- delivery, written when it is first claimed (so a worker killed after the provider accepted it
-- still leaves the row), due at the claim plus the duration and moved to sent_at plus the duration
-- once it is sent. The scheduler thread of every worker (app/dispatch/schedule.py) takes the due
-- rows (FOR UPDATE SKIP LOCKED) and, in one transaction, writes the fallback deliveries and marks
-- the row `done`, or `cancelled` (delivered, skipped, deleted, expired). A `delivered` report
-- cancels it and an `undelivered` one runs it, each in the report's own transaction.
CREATE TABLE delivery_deadlines (
    delivery_id      uuid PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    notification_id  uuid NOT NULL,
    channels         text[] NOT NULL,
    within_seconds   integer NOT NULL,
    due_at           timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'cancelled')),
    reason           text,
    finished_at      timestamptz
);
CREATE INDEX delivery_deadlines_due ON delivery_deadlines (due_at) WHERE status = 'pending';
