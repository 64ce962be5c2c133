-- contract: after f43503f
-- `deliveries` and `delivery_attempts` partitioned by their notification's `seq`, on the same ranges
-- as `notifications` (docs/history.md): retention drops a range of all three at once, no row
-- deleted one by one. The release before this one writes `notification_seq` on every row (0027).
--
-- As with 0026: a unique key must hold the partition key, so (id) becomes (id, notification_seq)
-- and (notification_id, channel) becomes (notification_id, channel, notification_seq), the same
-- rule since a notification has one seq; the foreign keys to deliveries(id) go (0027's trigger
-- deletes a deleted delivery's attempts and deadline). Empty tables (a new install) are converted
-- here; tables with rows by `flask history partition`, with `notifications` first.
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_delivery_id_fkey;
ALTER TABLE delivery_deadlines DROP CONSTRAINT IF EXISTS delivery_deadlines_delivery_id_fkey;

-- The history's tables, each with the column it is partitioned on; the first is the one whose
-- ranges the others follow.
CREATE FUNCTION history_tables() RETURNS TABLE (tbl text, key text) LANGUAGE sql IMMUTABLE AS $$
    VALUES ('notifications', 'seq'), ('deliveries', 'notification_seq'), ('delivery_attempts', 'notification_seq')
$$;

CREATE FUNCTION history_is_partitioned(tbl text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(tbl))
$$;

-- An empty partition of `parent` for [lo, hi), named <base>_p<lo>, made and then attached
-- (SHARE UPDATE EXCLUSIVE on the parent: reads and writes go on).
CREATE FUNCTION history_partition_add(parent regclass, base text, lo bigint, hi bigint) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    name text := format('%s_p%s', base, lpad(lo::text, 15, '0'));
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE'
                   ' INCLUDING COMPRESSION)', name, parent);
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', parent, name, lo, hi);
END;
$$;

-- As in 0026, and then every other partitioned table of the history gets the ranges of
-- `notifications` it lacks, so a delivery always has the partition of its notification's range.
CREATE OR REPLACE FUNCTION history_partitions_ensure(parent regclass, span bigint, ahead integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    top bigint;
    made integer := 0;
    base text := (SELECT regexp_replace(relname, '_partitioned$', '') FROM pg_class WHERE oid = parent);
    other record;
    missing record;
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
        PERFORM history_partition_add(parent, base, top, top + span);
        made := made + 1;
        top := top + span;
    END LOOP;
    IF parent = 'notifications'::regclass THEN
        FOR other IN SELECT t.tbl FROM history_tables() t WHERE t.tbl <> 'notifications'
                                                            AND history_is_partitioned(t.tbl) LOOP
            FOR missing IN SELECT n.lo, n.hi FROM history_partitions('notifications') n
                           WHERE NOT EXISTS (SELECT 1 FROM history_partitions(other.tbl::regclass) p WHERE p.lo = n.lo)
            LOOP
                PERFORM history_partition_add(other.tbl::regclass, other.tbl, missing.lo, missing.hi);
            END LOOP;
        END LOOP;
    END IF;
    RETURN made;
END;
$$;

-- Detach a range of the history: the partition of `notifications` and those of the same range of
-- the other partitioned tables, in one transaction, each waiting at most 50 ms for its lock.
CREATE OR REPLACE FUNCTION history_partition_detach(part regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    bounds record;
    other record;
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
    FOR other IN SELECT p.partition, t.tbl FROM history_tables() t, history_partitions(t.tbl::regclass) p
                 WHERE t.tbl <> 'notifications' AND history_is_partitioned(t.tbl) AND p.lo = bounds.lo LOOP
        EXECUTE format('ALTER TABLE %I DETACH PARTITION %s', other.tbl, other.partition);
    END LOOP;
END;
$$;

-- Finish a detached range: the counters, the dependents (a detached partition of deliveries and
-- of attempts is dropped whole; an unpartitioned deliveries has its rows deleted, 0027's trigger
-- taking their attempts), then the tables.
CREATE OR REPLACE FUNCTION history_partition_finish(part_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    held bigint;
    range record;
    deliveries_part text;
    attempts_part text;
BEGIN
    SELECT * INTO range FROM history_detached WHERE name = part_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;                       -- finished by another process
    END IF;
    deliveries_part := format('deliveries_p%s', lpad(range.lo::text, 15, '0'));
    attempts_part := format('delivery_attempts_p%s', lpad(range.lo::text, 15, '0'));
    EXECUTE format('SELECT notification_unread_add(array_agg(user_id), array_agg(customer_id), array_agg(type),'
                   ' array_agg(-n)) FROM (SELECT user_id, customer_id, type, count(*)::integer AS n FROM %I'
                   ' WHERE deleted_at IS NULL AND in_app AND read_at IS NULL GROUP BY 1, 2, 3) d', part_name);
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
    EXECUTE format('SELECT count(*) FROM %I', part_name) INTO held;
    EXECUTE format('DROP TABLE %I', part_name);
    DELETE FROM history_detached WHERE name = part_name;
    RETURN held;
END;
$$;

-- The conversion of one table of the history (0026's, made general): step 1, the empty
-- `<tbl>_partitioned` with the columns, checks and defaults of `tbl`; each primary or unique key
-- with the partition key added (the same rule: the key follows from the row's notification),
-- each other index as it is (a unique one without the key becoming plain); partitions from the
-- lowest key to two spans past the sequence (for `notifications`) or the ranges of
-- `notifications` (the others); and the mirror of every later change to `tbl`.
CREATE FUNCTION history_convert_begin(tbl text, key text, span bigint) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    target text := tbl || '_partitioned';
    item record;
    definition text;
    low bigint;
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE'
                   ' INCLUDING COMPRESSION) PARTITION BY RANGE (%I)', target, tbl, key);
    FOR item IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                WHERE conrelid = tbl::regclass AND contype IN ('p', 'u') ORDER BY contype LOOP
        definition := item.def;
        IF definition !~ ('\m' || key || '\M') THEN
            definition := regexp_replace(definition, '\)$', ', ' || key || ')');
        END IF;
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', target, item.conname || '_new', definition);
    END LOOP;
    FOR item IN SELECT c.relname, i.indexrelid, i.indisunique FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = tbl::regclass
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) LOOP
        definition := regexp_replace(pg_get_indexdef(item.indexrelid),
                                     format('^CREATE (UNIQUE )?INDEX \S+ ON (public\.)?%s ', tbl),
                                     format('CREATE %sINDEX %I ON %I ',
                                            CASE WHEN item.indisunique AND pg_get_indexdef(item.indexrelid)
                                                      ~ ('\m' || key || '\M') THEN 'UNIQUE ' ELSE '' END,
                                            item.relname || '_new', target));
        EXECUTE definition;
    END LOOP;
    IF tbl = 'notifications' THEN
        EXECUTE 'SELECT coalesce(min(seq), 0) / $1 * $1 FROM notifications' INTO low USING span;
        PERFORM history_partition_add(target::regclass, tbl, low, low + span);
        PERFORM history_partitions_ensure(target::regclass, span, 2);
    ELSE
        FOR item IN SELECT lo, hi FROM history_partitions('notifications') LOOP
            PERFORM history_partition_add(target::regclass, tbl, item.lo, item.hi);
        END LOOP;
    END IF;
    FOR item IN SELECT * FROM (VALUES ('insert', 'INSERT', 'NEW'), ('update', 'UPDATE', 'NEW'),
                                      ('delete', 'DELETE', 'OLD')) AS e(suffix, event, side) LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s TABLE AS changed_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION history_mirror_rows(%L)',
                       'history_mirror_' || item.suffix, item.event, tbl, item.side, key);
    END LOOP;
END;
$$;

-- While a table is copied, each changed row is written again to its partitioned twin (deleted,
-- then inserted as it is now; ON CONFLICT DO NOTHING against the copy). As the owner: the
-- service's role has no rights on the new table until the swap.
CREATE FUNCTION history_mirror_rows() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
DECLARE
    target text := TG_TABLE_NAME || '_partitioned';
    key text := TG_ARGV[0];
BEGIN
    EXECUTE format('DELETE FROM %I p USING changed_rows c WHERE p.%I = c.%I AND p.id = c.id', target, key, key);
    IF TG_OP <> 'DELETE' THEN
        EXECUTE format('INSERT INTO %I SELECT * FROM changed_rows ON CONFLICT DO NOTHING', target);
    END IF;
    RETURN NULL;
END;
$$;

-- The swap of one table (0026's, made general), one short transaction: the partitioned twin
-- takes the name, index names, triggers, owned sequences and grants of `tbl`, which becomes
-- `<tbl>_unpartitioned` (dropped by the caller).
CREATE FUNCTION history_convert_swap(tbl text) RETURNS void
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    item record;
    triggers text[];
BEGIN
    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', tbl);
    FOR item IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl::regclass AND tgname LIKE 'history\_mirror\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', item.tgname, tbl);
    END LOOP;
    SELECT array_agg(pg_get_triggerdef(oid)) INTO triggers FROM pg_trigger
    WHERE tgrelid = tbl::regclass AND NOT tgisinternal;
    FOR item IN SELECT tgname FROM pg_trigger WHERE tgrelid = tbl::regclass AND NOT tgisinternal LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', item.tgname, tbl);
    END LOOP;
    FOR item IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = tbl::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname, item.relname || '_unpartitioned');
    END LOOP;
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl, tbl || '_unpartitioned');
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl || '_partitioned', tbl);
    FOR item IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE i.indrelid = tbl::regclass AND c.relname LIKE '%\_new' LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', item.relname, left(item.relname, -4));
    END LOOP;
    FOR item IN SELECT s.oid::regclass AS sequence, a.attname FROM pg_class s
                JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid AND d.deptype = 'a'
                JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE s.relkind = 'S' AND d.refobjid = (tbl || '_unpartitioned')::regclass LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY %I.%I', item.sequence, tbl, item.attname);
    END LOOP;
    FOR item IN SELECT unnest(coalesce(triggers, '{}')) AS definition LOOP
        EXECUTE item.definition;       -- `ON public.<tbl>`: the partitioned table now
    END LOOP;
    FOR item IN SELECT grantee, string_agg(privilege_type, ', ') AS privileges
                FROM information_schema.role_table_grants
                WHERE table_schema = 'public' AND table_name = tbl || '_unpartitioned'
                  AND grantee <> current_user GROUP BY grantee LOOP
        EXECUTE format('GRANT %s ON %I TO %s', item.privileges, tbl,
                       CASE item.grantee WHEN 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(item.grantee) END);
    END LOOP;
END;
$$;

-- 0026's conversion of `notifications` alone, replaced by the general one above.
DROP FUNCTION history_conversion_begin(bigint);
DROP FUNCTION history_conversion_swap();
DROP FUNCTION history_mirror();

-- A new install: nothing to copy, so the conversion of the two tables runs now.
DO $$
DECLARE
    t record;
    has_rows boolean;
BEGIN
    IF NOT history_is_partitioned('notifications') THEN
        RETURN;                         -- `flask history partition` converts all three
    END IF;
    FOR t IN SELECT tbl, key FROM history_tables() WHERE tbl <> 'notifications' AND NOT history_is_partitioned(tbl)
    LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t.tbl) INTO has_rows;
        CONTINUE WHEN has_rows;
        PERFORM history_convert_begin(t.tbl, t.key, 0);
        PERFORM history_convert_swap(t.tbl);
        EXECUTE format('DROP TABLE %I', t.tbl || '_unpartitioned');
    END LOOP;
END;
$$;
