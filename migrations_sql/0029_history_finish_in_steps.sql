-- Retention's finish in small steps (#24: no request over 100 ms while a month's partition goes).
-- 0028's history_partition_finish took a detached month's unread notifications off the counters in
-- one upsert (~300,000 counter rows for a month of 1 M users) and counted the month with a parallel
-- scan, both cores busy for seconds beside the requests. Now the counters are taken off a few
-- thousand users at a time, each step its own transaction that records how far it got in
-- `history_detached` (a process dying between steps leaves the rest to the next pass, each user
-- taken off once), and the month is counted by the same steps; the caller pauses between them
-- (app/history/partitions.py). No parallel workers: a step is small, and retention never takes
-- both cores.
ALTER TABLE history_detached ADD COLUMN counted_through uuid,
                             ADD COLUMN held bigint NOT NULL DEFAULT 0;

-- One step: the next `users` users of the detached partition (in user_id order, after
-- `counted_through`) taken off the counters and counted; returns how many users (0: none left).
CREATE FUNCTION history_partition_uncount(part_name text, users integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET max_parallel_workers_per_gather = 0 AS $$
DECLARE
    progress record;
    after text;
    upto uuid;
    taken integer;
    rows_held bigint;
BEGIN
    SELECT * INTO progress FROM history_detached WHERE name = part_name FOR UPDATE;
    IF NOT FOUND OR to_regclass(part_name) IS NULL THEN
        RETURN 0;
    END IF;
    after := CASE WHEN progress.counted_through IS NULL THEN 'true' ELSE 'user_id > $1' END;
    EXECUTE format('SELECT (array_agg(user_id ORDER BY user_id DESC))[1], count(*) FROM (SELECT DISTINCT user_id FROM %I WHERE %s'
                   ' ORDER BY user_id LIMIT $2) u', part_name, after)
        INTO upto, taken USING progress.counted_through, users;
    IF taken = 0 THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type),'
                   ' array_agg(-n)) FROM (SELECT user_id, customer_id, type, count(*)::integer AS n FROM %I'
                   ' WHERE %s AND user_id <= $2 AND deleted_at IS NULL AND in_app AND read_at IS NULL'
                   ' GROUP BY 1, 2, 3) d', part_name, after)
        USING progress.counted_through, upto;
    EXECUTE format('SELECT count(*) FROM %I WHERE %s AND user_id <= $2', part_name, after)
        INTO rows_held USING progress.counted_through, upto;
    UPDATE history_detached SET counted_through = upto, held = held + rows_held WHERE name = part_name;
    RETURN taken;
END;
$$;

-- The rest of a detached partition's end: whatever steps are left (all of them for a caller that
-- takes none), its dependents, DROP; returns how many notifications it held.
CREATE OR REPLACE FUNCTION history_partition_finish(part_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET max_parallel_workers_per_gather = 0 AS $$
DECLARE
    range record;
    deliveries_part text;
    attempts_part text;
BEGIN
    PERFORM 1 FROM history_detached WHERE name = part_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;                       -- finished by another process
    END IF;
    WHILE history_partition_uncount(part_name, 100000) > 0 LOOP
    END LOOP;
    SELECT * INTO range FROM history_detached WHERE name = part_name;
    deliveries_part := format('deliveries_p%s', lpad(range.lo::text, 15, '0'));
    attempts_part := format('delivery_attempts_p%s', lpad(range.lo::text, 15, '0'));
    IF to_regclass(deliveries_part) IS NOT NULL THEN
        EXECUTE format('DELETE FROM delivery_deadlines WHERE delivery_id IN (SELECT id FROM %I)', deliveries_part);
        EXECUTE format('DROP TABLE %I', deliveries_part);
    ELSE
        EXECUTE format('DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM %I)', part_name);
    END IF;
    IF to_regclass(attempts_part) IS NOT NULL THEN
        EXECUTE format('DROP TABLE %I', attempts_part);
    END IF;
    EXECUTE format('DELETE FROM escalations WHERE notification_id IN (SELECT id FROM %I)', part_name);
    EXECUTE format('DELETE FROM ack_callbacks WHERE notification_id IN (SELECT id FROM %I)', part_name);
    EXECUTE format('DROP TABLE %I', part_name);
    DELETE FROM history_detached WHERE name = part_name;
    RETURN range.held;
END;
$$;
