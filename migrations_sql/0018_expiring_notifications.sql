-- Expiring notifications (issue 21): a trigger's `expires_at` is kept on each
-- of its notifications. After it the notification is delivered on no channel
-- (a delivery still queued or retrying ends `expired`) and is left out of the
-- inbox, its counts and the stream's replay (GET ?include_expired=true shows it).
-- A wider CHECK (more statuses) is an expand, not a contract: the previous release writes only
-- values it already allowed. The guard counts every DROP CONSTRAINT, so the marker says so:
-- contract: after d91dae9
ALTER TABLE notifications ADD COLUMN expires_at timestamptz;

ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped', 'expired')) NOT VALID;
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_status_check;
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_outcome_check,
    ADD CONSTRAINT delivery_attempts_outcome_check
        CHECK (outcome IN ('sent', 'retry', 'failed', 'skipped', 'held', 'expired')) NOT VALID;
ALTER TABLE delivery_attempts VALIDATE CONSTRAINT delivery_attempts_outcome_check;

-- The expiring notifications alone, with what the inbox and the unread counts
-- need to leave the expired ones out: the inbox stays an index-only scan of
-- notifications_inbox_covering minus this (small) set, and the counters of
-- 0011 minus the expired unread ones counted here.
CREATE INDEX notifications_expiring ON notifications (user_id, expires_at)
    INCLUDE (seq, customer_id, type, read_at, deleted_at, in_app) WHERE expires_at IS NOT NULL;
