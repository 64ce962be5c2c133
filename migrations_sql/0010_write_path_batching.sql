-- The write path at 1,000 triggers/s (issue 9): dispatch drains pending
-- triggers in batches, and audit rows are appended without a lock and sealed
-- into the hash chain afterwards.

-- 1. A trigger whose dispatch failed on its own (not as part of a batch) waits
-- `dispatch_after` before it is claimed again, with back-off, so it can never
-- hold up the triggers behind it; it stays `pending`, so it is never lost.
ALTER TABLE triggers ADD COLUMN dispatch_attempts integer NOT NULL DEFAULT 0,
                     ADD COLUMN dispatch_after timestamptz,
                     ADD COLUMN last_error text;

-- 2. Audit rows are inserted unchained: `xid` is the writing transaction and
-- `chain`, `prev_hash`, `hash` stay NULL until the sealer (app/audit.py) links
-- them, in commit-safe order, once every transaction that could still commit
-- an earlier row has ended. `chain` is the row's position in the chain.
ALTER TABLE audit_log ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                      ADD COLUMN chain bigint UNIQUE;
ALTER TABLE audit_log ALTER COLUMN prev_hash DROP NOT NULL,
                      ALTER COLUMN hash DROP NOT NULL;
-- The rows chained so far keep their order (by id).
ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only;
UPDATE audit_log SET chain = id;
ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only;
CREATE INDEX audit_log_unsealed ON audit_log (xid, id) WHERE hash IS NULL;

-- Still append-only for the service, with one exception: sealing, i.e. setting
-- chain, prev_hash and hash of a row that has none, changing nothing else.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.hash IS NULL AND OLD.chain IS NULL AND NEW.hash IS NOT NULL
       AND NEW.prev_hash IS NOT NULL AND NEW.chain IS NOT NULL
       AND (NEW.id, NEW.at, NEW.xid, NEW.actor_type, NEW.actor_id, NEW.request_id, NEW.client_ip, NEW.action,
            NEW.target_type, NEW.target_id, NEW.change)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.at, OLD.xid, OLD.actor_type, OLD.actor_id, OLD.request_id, OLD.client_ip, OLD.action,
            OLD.target_type, OLD.target_id, OLD.change) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;

-- Only the sealer chains a row: whatever an INSERT says about chain, prev_hash
-- and hash is dropped (a process of the previous release, still running during
-- a deploy, computes them at insert time; its rows are sealed like the others).
CREATE FUNCTION audit_log_unsealed_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.chain := NULL;
    NEW.prev_hash := NULL;
    NEW.hash := NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_log_unsealed_on_insert BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_unsealed_on_insert();
