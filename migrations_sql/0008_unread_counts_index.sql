-- Unread counts (GET /unread-count and the live `unread` event) group a
-- user's unread in-app notifications by customer and group. With both in the
-- index the counts come from the index alone, in grouping order, instead of
-- visiting every unread row in the table.
CREATE INDEX notifications_unread_counts ON notifications (user_id, customer_id, type)
    WHERE deleted_at IS NULL AND in_app AND read_at IS NULL;
