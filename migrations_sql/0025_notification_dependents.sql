-- A deleted notification takes its deliveries, escalation steps and acknowledgement callbacks
-- with it, whatever the layout of `notifications`. Until now the foreign keys' ON DELETE CASCADE
-- did it; a partitioned `notifications` (0026) cannot be referenced by `id` alone (a unique key
-- of a partitioned table must hold its partition key), so those foreign keys go with it and this
-- statement-level trigger does the same work: one DELETE per table for a whole retention batch.
-- With the foreign keys still in place (this release), their cascade has already run and these
-- DELETEs find nothing. Only the retention purge deletes notifications (a user's delete sets
-- `deleted_at`); a partition dropped whole fires no trigger, and app/history.py deletes its
-- dependents itself.
CREATE FUNCTION notification_dependents_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries WHERE notification_id IN (SELECT id FROM changed_rows);
    DELETE FROM escalations WHERE notification_id IN (SELECT id FROM changed_rows);
    DELETE FROM ack_callbacks WHERE notification_id IN (SELECT id FROM changed_rows);
    RETURN NULL;
END;
$$;

CREATE TRIGGER notification_dependents_delete AFTER DELETE ON notifications
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION notification_dependents_on_delete();
