-- The inbox page and its counts from one index (docs/inbox.md, "The inbox at 10 M rows").
-- With customer_id and read_at in the index, a page of any filter (a token's `customers`, a
-- status) picks its rows in seq order from the index alone, and the counts are index-only
-- scans: before, a first page for a token with `customers` sorted the user's whole inbox, and
-- counting read_at visited every row of it. It replaces notifications_inbox (same key, same
-- predicate), so inserts still maintain one index of this kind, not two.
--
-- On a big table build it without blocking writes BEFORE the release, by hand (CONCURRENTLY
-- cannot run inside the migration's transaction; the statements below then do nothing):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS notifications_inbox_covering ON notifications
--       (user_id, seq DESC) INCLUDE (customer_id, read_at) WHERE deleted_at IS NULL AND in_app;
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
    INCLUDE (customer_id, read_at) WHERE deleted_at IS NULL AND in_app;
DROP INDEX IF EXISTS notifications_inbox;
