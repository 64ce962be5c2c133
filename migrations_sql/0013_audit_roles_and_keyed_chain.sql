-- An audit the service itself cannot rewrite (docs/audit.md).
--
-- The service (web, worker) connects as an application role that may read and
-- insert audit rows but holds no UPDATE, DELETE or TRUNCATE on audit_log and
-- owns nothing, so it cannot ALTER the table or disable its triggers. The
-- release (running as the owner) grants that role its rights after every
-- migration (app/migrate.py). The two changes a row may ever see, sealing it
-- into the chain and replacing a forgotten user's id by its pseudonym, run
-- through the SECURITY DEFINER functions below, which change nothing else.

-- 1. The key that sealed a row (its hash is an HMAC under it, app/audit/keys.py);
-- NULL for rows sealed before keyed hashing (plain SHA-256).
ALTER TABLE audit_log ADD COLUMN key_id text;

-- 2. What an UPDATE may do: seal an unsealed row (chain, prev_hash, hash and
-- key_id from NULL, nothing else; with a key id: from this release on no row is
-- sealed with plain SHA-256, not even by a previous release's sealer still
-- running during the deploy), or replace a user's id in actor_id /
-- target_id by a pseudonym ('pseud:' + hex), nothing else. Anything else is
-- refused, whoever asks, while the trigger is enabled.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.chain IS NULL AND NEW.hash IS NOT NULL
       AND NEW.prev_hash IS NOT NULL AND NEW.chain IS NOT NULL AND NEW.key_id IS NOT NULL
       AND (NEW.id, NEW.at, NEW.xid, NEW.actor_type, NEW.actor_id, NEW.request_id, NEW.client_ip, NEW.action,
            NEW.target_type, NEW.target_id, NEW.change)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.xid, OLD.actor_type, OLD.actor_id, OLD.request_id, OLD.client_ip, OLD.action,
            OLD.target_type, OLD.target_id, OLD.change) THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND (NEW.id, NEW.at, NEW.xid, NEW.actor_type, NEW.request_id, NEW.client_ip, NEW.action,
            NEW.target_type, NEW.change, NEW.chain, NEW.prev_hash, NEW.hash, NEW.key_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.xid, OLD.actor_type, OLD.request_id, OLD.client_ip, OLD.action,
            OLD.target_type, OLD.change, OLD.chain, OLD.prev_hash, OLD.hash, OLD.key_id)
       AND (NEW.actor_id = OLD.actor_id OR (OLD.actor_type = 'user' AND NEW.actor_id LIKE 'pseud:%'))
       AND (NEW.target_id IS NOT DISTINCT FROM OLD.target_id
            OR (OLD.target_type = 'user' AND NEW.target_id LIKE 'pseud:%')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

-- 3. Nobody truncates the audit, the owner included (row triggers do not see a TRUNCATE).
CREATE FUNCTION audit_log_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: TRUNCATE is refused';
END;
$$;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_no_truncate();

-- 4. The sealer's horizon: the oldest transaction of this database still in
-- progress (app/audit/chain.py explains why). A definer function, because only
-- the owner (or pg_read_all_stats) sees other roles' transaction ids in
-- pg_stat_activity; the application role would see fewer and wait longer.
CREATE FUNCTION audit_horizon() RETURNS xid8 LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(min(x), pg_snapshot_xmax(pg_current_snapshot()))
      FROM pg_snapshot_xip(pg_current_snapshot()) AS x
     WHERE xid(x) NOT IN (SELECT backend_xid FROM pg_stat_activity WHERE backend_xid IS NOT NULL
                            AND datname IS DISTINCT FROM current_database())
$$;

-- 5. Sealing: set the place, links and HMAC of unsealed rows (the trigger refuses anything else).
CREATE FUNCTION audit_seal(ids bigint[], chains bigint[], prevs text[], hashes text[], key_ids text[])
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    done integer;
BEGIN
    UPDATE audit_log a SET chain = s.chain, prev_hash = s.prev, hash = s.hash, key_id = s.key_id
      FROM unnest(ids, chains, prevs, hashes, key_ids) AS s(id, chain, prev, hash, key_id)
     WHERE a.id = s.id AND a.hash IS NULL;
    GET DIAGNOSTICS done = ROW_COUNT;
    RETURN done;
END;
$$;

-- 6. Erasure (`flask users forget`): a user's id in actor_id / target_id becomes
-- its pseudonym. The chain's hashes are computed over the pseudonym from the
-- start (docs/audit.md), so they still verify.
CREATE FUNCTION audit_pseudonymise(ids bigint[], actor_ids text[], target_ids text[])
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    done integer;
BEGIN
    UPDATE audit_log a SET actor_id = coalesce(s.actor_id, a.actor_id), target_id = coalesce(s.target_id, a.target_id)
      FROM unnest(ids, actor_ids, target_ids) AS s(id, actor_id, target_id)
     WHERE a.id = s.id;
    GET DIAGNOSTICS done = ROW_COUNT;
    RETURN done;
END;
$$;

REVOKE ALL ON FUNCTION audit_horizon() FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_seal(bigint[], bigint[], text[], text[], text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION audit_pseudonymise(bigint[], text[], text[]) FROM PUBLIC;
