-- A user's choices. customer_id = the nil UUID means "for all customers";
-- event = '' means the whole group; channel = '' means every channel.
CREATE TABLE preferences (
    user_id      uuid NOT NULL,
    customer_id  uuid NOT NULL DEFAULT '00000000-0000-0000-0000-000000000000',
    group_name   text NOT NULL,
    event        text NOT NULL DEFAULT '',
    channel      text NOT NULL DEFAULT '',
    enabled      boolean NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, group_name, customer_id, event, channel)
);

-- A notification whose in-app channel is switched off is kept for history and
-- audit but is not part of the inbox or the stream.
ALTER TABLE notifications ADD COLUMN in_app boolean NOT NULL DEFAULT true;
DROP INDEX notifications_inbox;
DROP INDEX notifications_inbox_customer;
DROP INDEX notifications_inbox_unread;
CREATE INDEX notifications_inbox ON notifications (user_id, seq DESC)
    WHERE deleted_at IS NULL AND in_app;
CREATE INDEX notifications_inbox_customer ON notifications (user_id, customer_id, seq DESC)
    WHERE deleted_at IS NULL AND in_app;
CREATE INDEX notifications_inbox_unread ON notifications (user_id, seq DESC)
    WHERE deleted_at IS NULL AND in_app AND read_at IS NULL;
