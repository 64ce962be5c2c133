-- A user's quiet hours: local wall-clock window (in their contact time zone)
-- during which deliveries on `channels` wait, unless the event is urgent or locked.
CREATE TABLE quiet_hours (
    user_id     uuid PRIMARY KEY,
    start_time  time NOT NULL,
    end_time    time NOT NULL,
    channels    text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A delivery held by quiet hours records the hold as an attempt outcome.
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_outcome_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_outcome_check
    CHECK (outcome IN ('sent', 'retry', 'failed', 'skipped', 'held'));
