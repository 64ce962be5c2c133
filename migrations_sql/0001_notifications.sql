-- The inbox. `seq` is the stream cursor: dispatch takes a transaction-level
-- advisory lock before inserting, so values become visible in increasing
-- order and a reader that has seen seq N never later finds a smaller one.
CREATE TABLE notifications (
    id           uuid PRIMARY KEY,
    seq          bigserial NOT NULL UNIQUE,
    user_id      uuid NOT NULL,
    customer_id  uuid,
    type         text NOT NULL,
    event        text NOT NULL,
    title        text NOT NULL,
    content      text NOT NULL DEFAULT '',
    link_url     text,
    link_text    text,
    rec_type     text,
    rec_id       text,
    read_at      timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz
);

-- The inbox list, newest first, for a user (all customers or one), and its
-- unread filter; soft-deleted rows are left out of every index the inbox uses.
CREATE INDEX notifications_inbox ON notifications (user_id, seq DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX notifications_inbox_customer ON notifications (user_id, customer_id, seq DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX notifications_inbox_unread ON notifications (user_id, seq DESC)
    WHERE deleted_at IS NULL AND read_at IS NULL;
