-- The tamper-evident audit log: one row per state-changing operation, written
-- in the same transaction as the change. Rows form a hash chain:
--   hash = sha256(prev_hash || canonical JSON of the row's content)
-- (app/audit.py), appended under a transaction-level advisory lock so
-- concurrent writers never fork the chain. `flask audit verify` recomputes it.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor_type   text NOT NULL CHECK (actor_type IN ('user', 'service', 'operator', 'system')),
    actor_id     text NOT NULL,
    request_id   text,
    client_ip    text,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text,
    change       jsonb NOT NULL,
    prev_hash    text NOT NULL UNIQUE,  -- one successor per row: the chain cannot fork
    hash         text NOT NULL
);
-- The filters of GET /v1/notifications/audit, newest first.
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_target ON audit_log (target_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- Append-only for the service: an UPDATE or DELETE fails. (Whoever can drop
-- this trigger can edit rows; the hash chain is what makes that visible.)
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
