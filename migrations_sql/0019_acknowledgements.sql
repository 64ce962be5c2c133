-- Notices that need an acknowledgement, with escalation (issue 21).
--
-- A notification of a trigger (or event) with `ack.required` carries its
-- deadline; `acked_at` is set once, by the user's POST /{id}/ack, which also
-- marks it read (a read is no acknowledgement).
ALTER TABLE notifications ADD COLUMN ack_required boolean NOT NULL DEFAULT false,
                          ADD COLUMN ack_deadline timestamptz,
                          ADD COLUMN acked_at timestamptz;
-- ?ack=pending and the counts' ack_pending: the few notices still waiting, not the inbox.
CREATE INDEX notifications_ack_pending ON notifications (user_id, seq DESC)
    INCLUDE (customer_id, expires_at) WHERE ack_required AND acked_at IS NULL AND deleted_at IS NULL AND in_app;

-- One row per notification and escalation step: due at the notification's
-- creation plus the step's `after`. The scheduler of a worker takes the due
-- ones (FOR UPDATE SKIP LOCKED) and, in one transaction, writes the step's
-- delivery rows and marks it `done`, or `cancelled` when the notice was
-- acknowledged, expired or deleted by then: a step runs at most once, whatever
-- is killed when. An acknowledgement cancels the pending steps in its own
-- transaction.
CREATE TABLE escalations (
    notification_id  uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    step             integer NOT NULL,
    user_id          uuid NOT NULL,
    channels         text[] NOT NULL,
    due_at           timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'cancelled')),
    reason           text,
    finished_at      timestamptz,
    PRIMARY KEY (notification_id, step)
);
CREATE INDEX escalations_due ON escalations (due_at) WHERE status = 'pending';

-- A delivery made by an escalation step: its channel is sent even where the
-- event's default channels do not name it (the user's explicit opt-out still
-- holds, unless the event is locked).
ALTER TABLE deliveries ADD COLUMN escalation_step integer;

-- The triggering service's callbacks (`callback_url`, hosts in ACK_CALLBACK_HOSTS
-- only): one row per notice and event, signed and POSTed by the callback thread
-- of a worker (app/acks/callbacks.py), retried with queue.yaml's back-off. The
-- `ack_overdue` row is written with the notice, due at its deadline; an
-- acknowledgement cancels it and writes the `ack` row, due at once.
CREATE TABLE ack_callbacks (
    id               uuid PRIMARY KEY,
    notification_id  uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    event            text NOT NULL CHECK (event IN ('ack', 'ack_overdue')),
    url              text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_at          timestamptz NOT NULL DEFAULT now(),
    locked_until     timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (notification_id, event)
);
CREATE INDEX ack_callbacks_due ON ack_callbacks (next_at) WHERE status IN ('pending', 'sending');
