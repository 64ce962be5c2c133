-- contract: after 24fea99
-- Partitioned history (docs/history.md): `notifications` becomes a table partitioned by ranges of
-- `seq`, so retention drops whole partitions instead of deleting rows, and the inbox and the
-- stream replay (both ordered by `seq`) scan partitions newest first and stop at their limit.
--
-- A unique key of a partitioned table must hold its partition key: the primary key becomes
-- (id, seq), UNIQUE (trigger_id, user_id) a plain index (24fea99 stores each notification once
-- without it), and the foreign keys that referenced notifications(id) go (0025's trigger deletes
-- a notification's dependents). 24fea99 is the release that no longer needs any of them.
--
-- A database whose `notifications` is empty (a new install) is converted here. One with rows is
-- left as it is and converted online by `flask history partition` (docs/history.md): the
-- functions below do the work for both.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_notification_id_fkey;
ALTER TABLE escalations DROP CONSTRAINT IF EXISTS escalations_notification_id_fkey;
ALTER TABLE ack_callbacks DROP CONSTRAINT IF EXISTS ack_callbacks_notification_id_fkey;

-- A partitioned table's partitions and their ranges of the key, lowest first, read from the catalogue.
CREATE FUNCTION history_partitions(parent regclass)
RETURNS TABLE (partition regclass, lo bigint, hi bigint) LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass, m[1]::bigint, m[2]::bigint
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid,
         regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''?(-?\d+)''?\) TO \(''?(-?\d+)''?\)') m
    WHERE i.inhparent = parent
    ORDER BY 2
$$;

-- The highest `seq` handed out so far (0 before the first).
CREATE FUNCTION history_current_seq() RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = public, pg_temp AS $$
    SELECT coalesce(pg_sequence_last_value('notifications_seq_seq'), 0)
$$;

-- Keeps `ahead` partitions of `span` values of `seq` beyond the one the sequence is in, each
-- named <parent>_p<lower bound>; returns how many it created. Run by every worker about every
-- half minute and by the release (app/history/partitions.py), as the owner (SECURITY DEFINER:
-- the service's role may not run DDL). A new partition is made empty and then attached, which
-- takes SHARE UPDATE EXCLUSIVE on the parent: reads and writes go on meanwhile.
CREATE FUNCTION history_partitions_ensure(parent regclass, span bigint, ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    top bigint;
    made integer := 0;
    base text := (SELECT regexp_replace(relname, '_partitioned$', '') FROM pg_class WHERE oid = parent);
    name text;
BEGIN
    IF span < 1 OR ahead < 1 THEN
        RAISE EXCEPTION 'span and ahead must be positive, not % and %', span, ahead;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = parent) THEN
        RETURN 0;                       -- not converted yet
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('history_partitions_ensure'));
    PERFORM set_config('lock_timeout', '5s', true);
    SELECT max(hi) INTO top FROM history_partitions(parent);
    IF top IS NULL THEN
        top := history_current_seq() / span * span;
    END IF;
    WHILE top <= history_current_seq() + span * ahead LOOP
        name := format('%s_p%s', base, lpad(top::text, 15, '0'));
        EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE'
                       ' INCLUDING COMPRESSION)', name, parent);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', parent, name, top,
                       top + span);
        made := made + 1;
        top := top + span;
    END LOOP;
    RETURN made;
END;
$$;

-- Retention by partition, in two steps each of its own transaction (app/history/retention.py):
-- detach (a moment's ACCESS EXCLUSIVE on `notifications`, given up after 50 ms and tried again
-- later, so no request waits longer), then finish (counters, dependents, DROP) on the detached
-- table, which nothing writes any more. `history_detached` remembers a detached partition until
-- it is finished, so a process dying in between leaves the work to the next pass.
CREATE TABLE history_detached (
    name        text PRIMARY KEY,
    lo          bigint NOT NULL,
    hi          bigint NOT NULL,
    detached_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION history_partition_detach(part regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    bounds record;
BEGIN
    SELECT * INTO bounds FROM history_partitions('notifications') p WHERE p.partition = part;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a partition of notifications', part;
    END IF;
    IF bounds.hi > history_current_seq() THEN
        RAISE EXCEPTION '% holds the current or future seq values: it is never detached', part;
    END IF;
    PERFORM set_config('lock_timeout', '50ms', true);
    INSERT INTO history_detached (name, lo, hi)
    VALUES ((SELECT relname FROM pg_class WHERE oid = part), bounds.lo, bounds.hi);
    EXECUTE format('ALTER TABLE notifications DETACH PARTITION %s', part);
END;
$$;

-- Takes the detached partition's unread notifications off the counters (a dropped table fires
-- no trigger), deletes their dependents (what 0025's trigger does for deleted rows), drops it;
-- returns how many notifications it held.
CREATE FUNCTION history_partition_finish(part_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    held bigint;
BEGIN
    PERFORM 1 FROM history_detached WHERE name = part_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;                       -- finished by another process
    END IF;
    EXECUTE format('SELECT notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type),'
                   ' array_agg(-n)) FROM (SELECT user_id, customer_id, type, count(*)::integer AS n FROM %I'
                   ' WHERE deleted_at IS NULL AND in_app AND read_at IS NULL GROUP BY 1, 2, 3) d', part_name);
    EXECUTE format('DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM %I)', part_name);
    EXECUTE format('DELETE FROM escalations WHERE notification_id IN (SELECT id FROM %I)', part_name);
    EXECUTE format('DELETE FROM ack_callbacks WHERE notification_id IN (SELECT id FROM %I)', part_name);
    EXECUTE format('SELECT count(*) FROM %I', part_name) INTO held;
    EXECUTE format('DROP TABLE %I', part_name);
    DELETE FROM history_detached WHERE name = part_name;
    RETURN held;
END;
$$;

-- The conversion, step 1: `notifications_partitioned`, empty, with the columns, checks, defaults
-- and indexes of `notifications` (each index named <name>_new until the swap; a unique index
-- without `seq` becomes a plain one), partitions from the lowest stored `seq` up to `ahead` spans
-- past the current one, and triggers on `notifications` that mirror every change to it while the
-- rows are copied (app/history/convert.py).
CREATE FUNCTION history_conversion_begin(span bigint) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    index record;
    definition text;
BEGIN
    CREATE TABLE notifications_partitioned (LIKE notifications INCLUDING DEFAULTS INCLUDING CONSTRAINTS
        INCLUDING STORAGE INCLUDING COMPRESSION) PARTITION BY RANGE (seq);
    ALTER TABLE notifications_partitioned ADD CONSTRAINT notifications_pkey_new PRIMARY KEY (id, seq),
        ADD CONSTRAINT notifications_seq_key_new UNIQUE (seq);
    FOR index IN SELECT c.relname, i.indexrelid, i.indisunique FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'notifications'::regclass
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
    LOOP
        definition := regexp_replace(pg_get_indexdef(index.indexrelid),
                                     '^CREATE (UNIQUE )?INDEX \S+ ON (public\.)?notifications ',
                                     format('CREATE %sINDEX %I ON notifications_partitioned ',
                                            CASE WHEN index.indisunique AND pg_get_indexdef(index.indexrelid) ~ '\mseq\M'
                                                 THEN 'UNIQUE ' ELSE '' END, index.relname || '_new'));
        EXECUTE definition;
    END LOOP;
    EXECUTE format('CREATE TABLE notifications_p%s PARTITION OF notifications_partitioned FOR VALUES FROM (%s) TO (%s)',
                   lpad(((SELECT coalesce(min(seq), 0) FROM notifications) / span * span)::text, 15, '0'),
                   (SELECT coalesce(min(seq), 0) FROM notifications) / span * span,
                   (SELECT coalesce(min(seq), 0) FROM notifications) / span * span + span);
    PERFORM history_partitions_ensure('notifications_partitioned', span, 2);
    CREATE TRIGGER history_mirror_insert AFTER INSERT ON notifications REFERENCING NEW TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION history_mirror();
    CREATE TRIGGER history_mirror_update AFTER UPDATE ON notifications REFERENCING NEW TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION history_mirror();
    CREATE TRIGGER history_mirror_delete AFTER DELETE ON notifications REFERENCING OLD TABLE AS changed_rows
        FOR EACH STATEMENT EXECUTE FUNCTION history_mirror();
END;
$$;

-- While the copy runs, a changed row is written to the partitioned table again (deleted, then
-- inserted as it is now); one not copied yet is simply inserted, and the copy's batch that
-- reaches it later finds it there (ON CONFLICT DO NOTHING). The copy locks each batch's rows
-- (FOR UPDATE SKIP LOCKED), so a change waits for the batch that copies its row, and is mirrored
-- after it. As the owner: the service's role has no rights on the new table until the swap.
CREATE FUNCTION history_mirror() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM notifications_partitioned p USING changed_rows c WHERE p.seq = c.seq AND p.id = c.id;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO notifications_partitioned SELECT * FROM changed_rows ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

-- The conversion, last step, in one short transaction: the partitioned table takes the name,
-- the indexes' names, the triggers, the sequence and the grants of `notifications`, which
-- becomes `notifications_unpartitioned` (dropped by the caller once it is content).
CREATE FUNCTION history_conversion_swap() RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    item record;
    triggers text[];
BEGIN
    LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE;
    DROP TRIGGER history_mirror_insert ON notifications;
    DROP TRIGGER history_mirror_update ON notifications;
    DROP TRIGGER history_mirror_delete ON notifications;
    SELECT array_agg(pg_get_triggerdef(oid)) INTO triggers FROM pg_trigger
    WHERE tgrelid = 'notifications'::regclass AND NOT tgisinternal;
    FOR item IN SELECT tgname FROM pg_trigger WHERE tgrelid = 'notifications'::regclass AND NOT tgisinternal LOOP
        EXECUTE format('DROP TRIGGER %I ON notifications', item.tgname);
    END LOOP;
    FOR item IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'notifications'::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname, item.relname || '_unpartitioned');
    END LOOP;
    ALTER TABLE notifications RENAME TO notifications_unpartitioned;
    ALTER TABLE notifications_partitioned RENAME TO notifications;
    FOR item IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'notifications'::regclass AND c.relname LIKE '%\_new' LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname, left(item.relname, -4));
    END LOOP;
    ALTER SEQUENCE notifications_seq_seq OWNED BY notifications.seq;
    FOR item IN SELECT unnest(coalesce(triggers, '{}')) AS definition LOOP
        EXECUTE item.definition;       -- `ON public.notifications`: the partitioned table now
    END LOOP;
    FOR item IN SELECT grantee, string_agg(privilege_type, ', ') AS privileges
                FROM information_schema.role_table_grants
                WHERE table_schema = 'public' AND table_name = 'notifications_unpartitioned'
                  AND grantee <> current_user GROUP BY grantee LOOP
        EXECUTE format('GRANT %s ON notifications TO %s', item.privileges,
                       CASE item.grantee WHEN 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(item.grantee) END);
    END LOOP;
END;
$$;

-- A new install: nothing to copy, so the whole conversion runs now, with partitions of ten
-- million values of `seq` (the worker then keeps them ahead with HISTORY_PARTITION_ROWS).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'notifications'::regclass)
       AND NOT EXISTS (SELECT 1 FROM notifications) THEN
        PERFORM history_conversion_begin(10000000);
        PERFORM history_conversion_swap();
        DROP TABLE notifications_unpartitioned;
    END IF;
END;
$$;
