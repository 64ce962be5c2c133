-- Closed partitions rewritten in user order (#24, docs/history.md "Compaction"). Rows are stored
-- in `seq` order, so a user's notifications of a month lie on as many heap pages as there are
-- of them, and an inbox page of 50 read ~50 pages, most of them cold on a history larger than
-- memory. A partition no new `seq` can reach is copied, sorted by (user_id, seq), into a new
-- table while it keeps serving; the changes made meanwhile are logged by a row trigger and
-- applied again; a short swap (the DETACH's moment of ACCESS EXCLUSIVE on `notifications`, given
-- up after 50 ms and tried again) puts the copy in its place. As the owner (SECURITY DEFINER):
-- the service's role runs no DDL. app/history/compaction.py decides when.

-- A partition compacted (done_at set) or being compacted; a new pass over one not done starts over.
CREATE TABLE history_compacted (
    name       text PRIMARY KEY,
    lo         bigint NOT NULL,
    hi         bigint NOT NULL,
    rows       bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    done_at    timestamptz
);

-- The `seq` of every row inserted, updated or deleted in the partition being compacted since it
-- began. Inserted too: a partition is closed once the sequence has passed its range, but a
-- transaction that took a value of it may still be storing its rows (a chunk of a bulk trigger
-- straddles the boundary); creating the trigger waits for it (SHARE ROW EXCLUSIVE against its
-- ROW EXCLUSIVE), so each such row is in the copy's snapshot or in the log.
-- One compaction runs at a time (app/history/compaction.py takes db.Locks.RETENTION).
CREATE TABLE history_compact_changes (
    id  bigserial PRIMARY KEY,
    seq bigint NOT NULL
);

CREATE FUNCTION history_compact_log() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO history_compact_changes (seq) VALUES (CASE TG_OP WHEN 'DELETE' THEN OLD.seq ELSE NEW.seq END);
    RETURN NULL;
END;
$$;

-- Step 1: the empty copy `<name>_sorted` (the columns, defaults and checks of `notifications`,
-- and a check of the partition's range, so the ATTACH needs no scan) and the trigger logging
-- changes; leftovers of a pass that died are dropped first (one that died after its swap is
-- finished instead). Returns false, and marks the partition done, when there is nothing to copy.
CREATE FUNCTION history_partition_compact_begin(part regclass) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    bounds record;
    part_name text := (SELECT relname FROM pg_class WHERE oid = part);
    sorted text := (SELECT relname FROM pg_class WHERE oid = part) || '_sorted';
    empty boolean;
BEGIN
    SELECT * INTO bounds FROM history_partitions('notifications') p WHERE p.partition = part;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a partition of notifications', part;
    END IF;
    IF bounds.hi > history_current_seq() THEN
        RAISE EXCEPTION '% holds the current or future seq values: it is never compacted', part;
    END IF;
    IF to_regclass(part_name || '_unsorted') IS NOT NULL AND to_regclass(sorted) IS NULL THEN
        PERFORM history_partition_compact_finish(part_name);    -- swapped, then the process died
        RETURN false;
    END IF;
    PERFORM set_config('lock_timeout', '50ms', true);     -- the trigger locks out the partition's writers
    EXECUTE format('DROP TABLE IF EXISTS %I, %I', sorted, part_name || '_unsorted');
    EXECUTE format('DROP TRIGGER IF EXISTS history_compact_log ON %s', part);
    DELETE FROM history_compact_changes;
    EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %s)', part) INTO empty;
    INSERT INTO history_compacted (name, lo, hi, rows, done_at)
    VALUES (part_name, bounds.lo, bounds.hi, CASE WHEN empty THEN 0 END, CASE WHEN empty THEN now() END)
    ON CONFLICT (name) DO UPDATE SET started_at = now(), rows = EXCLUDED.rows, done_at = EXCLUDED.done_at;
    IF empty THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE notifications INCLUDING DEFAULTS INCLUDING CONSTRAINTS'
                   ' INCLUDING STORAGE INCLUDING COMPRESSION)', sorted);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (seq >= %s AND seq < %s)', sorted,
                   part_name || '_range', bounds.lo, bounds.hi);
    EXECUTE format('CREATE TRIGGER history_compact_log AFTER INSERT OR UPDATE OR DELETE ON %s'
                   ' FOR EACH ROW EXECUTE FUNCTION history_compact_log()', part);
    RETURN true;
END;
$$;

-- Step 2, long and lock-free (the partition is only read): the rows in (user_id, seq) order, then
-- the partition's own indexes and unique constraints built on the copy, statistics. Returns the rows copied.
CREATE FUNCTION history_partition_compact_copy(part_name text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
SET max_parallel_workers_per_gather = 0 SET max_parallel_maintenance_workers = 0
SET work_mem = '256MB' SET maintenance_work_mem = '256MB' AS $$
DECLARE
    sorted text := part_name || '_sorted';
    copied bigint;
    index record;
BEGIN
    EXECUTE format('INSERT INTO %I SELECT * FROM %I ORDER BY user_id, seq', sorted, part_name);
    GET DIAGNOSTICS copied = ROW_COUNT;
    FOR index IN SELECT pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i
                 WHERE i.indrelid = part_name::regclass
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) LOOP
        EXECUTE regexp_replace(index.definition, '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ',
                               format('CREATE \1INDEX ON %I ', sorted));
    END LOOP;
    -- the primary key and UNIQUE (seq) as constraints: the ATTACH takes an index for the parent's
    -- constraint only from a constraint (it would build one under its lock otherwise)
    FOR index IN SELECT k.oid, pg_get_constraintdef(k.oid) AS definition FROM pg_constraint k
                 WHERE k.conrelid = part_name::regclass AND k.contype IN ('p', 'u') LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', sorted, sorted || '_c' || index.oid, index.definition);
    END LOOP;
    EXECUTE format('ANALYZE %I', sorted);
    UPDATE history_compacted SET rows = copied WHERE name = part_name;
    RETURN copied;
END;
$$;

-- Step 3, repeated: the rows changed since the copy's snapshot written to the copy again (deleted,
-- then inserted as they are now). The logged changes are read once, as an array: each statement
-- of a function has its own snapshot, and a change committed between them is the next round's.
-- Returns how many changes it applied.
CREATE FUNCTION history_partition_compact_catch_up(part_name text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    ids bigint[];
    seqs bigint[];
BEGIN
    SELECT array_agg(id), array_agg(DISTINCT seq) INTO ids, seqs FROM history_compact_changes;
    IF ids IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE format('DELETE FROM %I WHERE seq = ANY($1)', part_name || '_sorted') USING seqs;
    EXECUTE format('INSERT INTO %I SELECT * FROM %I WHERE seq = ANY($1)', part_name || '_sorted', part_name)
        USING seqs;
    DELETE FROM history_compact_changes WHERE id = ANY(ids);
    RETURN cardinality(ids);
END;
$$;

-- Step 4, one short transaction: with `notifications` locked (waiting at most 50 ms, as a
-- DETACH does: requests queue behind a waiting lock), the last changes applied, the partition
-- detached and renamed `<name>_unsorted`, the copy attached in its place under its name and its
-- indexes under the old ones' names. Step 5 (`finish`) drops the old table outside the lock.
CREATE FUNCTION history_partition_compact_swap(part_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    bounds record;
    sorted text := part_name || '_sorted';
    names record;
BEGIN
    SELECT * INTO bounds FROM history_compacted WHERE name = part_name AND done_at IS NULL;
    IF NOT FOUND OR to_regclass(sorted) IS NULL THEN
        RAISE EXCEPTION 'no compaction of % is under way', part_name;
    END IF;
    PERFORM set_config('lock_timeout', '50ms', true);
    LOCK TABLE notifications IN ACCESS EXCLUSIVE MODE;
    PERFORM history_partition_compact_catch_up(part_name);
    CREATE TEMP TABLE history_compact_names ON COMMIT DROP AS
        SELECT i.inhparent AS parent_index, c.relname AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_index x ON x.indexrelid = c.oid
        WHERE x.indrelid = part_name::regclass;
    EXECUTE format('ALTER TABLE notifications DETACH PARTITION %I', part_name);
    EXECUTE format('ALTER TABLE %I RENAME TO %I', part_name, part_name || '_unsorted');
    FOR names IN SELECT c.relname AS name, c.oid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
                 WHERE x.indrelid = (part_name || '_unsorted')::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', names.name, 'history_unsorted_' || names.oid);
    END LOOP;
    EXECUTE format('ALTER TABLE notifications ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', sorted,
                   bounds.lo, bounds.hi);
    EXECUTE format('ALTER TABLE %I RENAME TO %I', sorted, part_name);
    FOR names IN SELECT c.relname AS current, n.name AS wanted
                 FROM history_compact_names n JOIN pg_inherits i ON i.inhparent = n.parent_index
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_index x ON x.indexrelid = c.oid
                 WHERE x.indrelid = part_name::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', names.current, names.wanted);
    END LOOP;
END;
$$;

-- Step 5: the old table dropped, the partition marked done.
CREATE FUNCTION history_partition_compact_finish(part_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS %I', part_name || '_unsorted');
    DELETE FROM history_compact_changes;
    UPDATE history_compacted SET done_at = now() WHERE name = part_name;
END;
$$;
