-- A user's notifications in seq order with every column the inbox filters on, so that the
-- inbox page and its counts are read from indexes alone (docs/inbox.md, "The inbox at 10 M
-- rows"). Before, counting read_at visited every row of a user's inbox (562 ms for 28,000
-- notifications), a first page for a token with `customers` sorted the whole inbox, and
-- deep pages fetched every skipped row. Not partial: replay's latest_seq
-- (`max(seq) WHERE user_id = ...`, no deleted/in_app condition) needs it too; without an index
-- of user_id it walked the whole table backwards for a user with no notification (24 s at
-- 10 M rows). It replaces notifications_inbox (same key, that index's rows are a subset).
--
-- On a big table build it without blocking writes BEFORE the release, by hand (CONCURRENTLY
-- cannot run inside the migration's transaction; the statements below then do nothing):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_inbox_covering ON notifications
--       (user_id, seq DESC) INCLUDE (customer_id, read_at, deleted_at, in_app);
--   DROP INDEX CONCURRENTLY IF EXISTS notifications_inbox;
-- A CONCURRENTLY build that fails leaves an INVALID index of that name; this file drops and
-- rebuilds such a one rather than taking it for done.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index
               WHERE indexrelid = to_regclass('notifications_inbox_covering') AND NOT indisvalid) THEN
        DROP INDEX notifications_inbox_covering;
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS notifications_inbox_covering ON notifications (user_id, seq DESC)
    INCLUDE (customer_id, read_at, deleted_at, in_app);
DROP INDEX IF EXISTS notifications_inbox;
