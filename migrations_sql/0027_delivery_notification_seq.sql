-- Deliveries and their attempts carry their notification's `seq` (written by the code of this
-- release), so that 0028 can partition them on the same ranges as `notifications` and retention
-- drops a range of all three together (docs/history.md). Rows written before stay NULL until
-- `flask history partition` fills them in batches before converting.
ALTER TABLE deliveries ADD COLUMN notification_seq bigint;
ALTER TABLE delivery_attempts ADD COLUMN notification_seq bigint;

-- A deleted delivery takes its attempts and its report deadline with it, whatever the layout:
-- the foreign keys' ON DELETE CASCADE did it until now; a partitioned `deliveries` (0028) cannot be
-- referenced by `id` alone. With the foreign keys still there, these DELETEs find nothing.
CREATE FUNCTION delivery_dependents_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM changed_rows);
    DELETE FROM delivery_deadlines WHERE delivery_id IN (SELECT id FROM changed_rows);
    RETURN NULL;
END;
$$;

CREATE TRIGGER delivery_dependents_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_dependents_on_delete();
