-- Accepted triggers: the transactional outbox behind every 202. A row here
-- is written and committed before the 202 is sent; the relay re-enqueues
-- any row still `pending` whose job was lost.
CREATE TABLE triggers (
    id               uuid PRIMARY KEY,
    api_key_id       text NOT NULL,
    idempotency_key  text,
    body_hash        text NOT NULL,
    body             jsonb NOT NULL,
    response         jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dispatched')),
    users_total      integer NOT NULL,
    users_done       integer NOT NULL DEFAULT 0,
    request_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    dispatched_at    timestamptz
);
CREATE UNIQUE INDEX triggers_idempotency ON triggers (api_key_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX triggers_pending ON triggers (created_at) WHERE status = 'pending';

-- A trigger stores at most one notification per user: a job that runs twice
-- (crash, re-enqueue) inserts nothing the second time.
ALTER TABLE notifications ADD COLUMN trigger_id uuid;
CREATE UNIQUE INDEX notifications_trigger_user ON notifications (trigger_id, user_id);

-- One row per notification and channel: what happened to it, and why.
CREATE TABLE deliveries (
    id                   uuid PRIMARY KEY,
    notification_id      uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id              uuid NOT NULL,
    channel              text NOT NULL,
    status               text NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    reason               text,
    attempts             integer NOT NULL DEFAULT 0,
    attempt_base         integer NOT NULL DEFAULT 0,  -- attempts made before an operator re-enqueue
    last_error           text,
    provider_message_id  text,
    locked_until         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    UNIQUE (notification_id, channel)
);
CREATE INDEX deliveries_unfinished ON deliveries (updated_at) WHERE status IN ('pending', 'sending');
CREATE INDEX deliveries_failed ON deliveries (updated_at) WHERE status = 'failed';

-- Every attempt of every delivery and its outcome, for the audit trail.
CREATE TABLE delivery_attempts (
    id                   bigserial PRIMARY KEY,
    delivery_id          uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt              integer NOT NULL,
    outcome              text NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed', 'skipped')),
    error                text,
    provider_message_id  text,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);
