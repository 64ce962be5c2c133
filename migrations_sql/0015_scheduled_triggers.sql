-- Scheduled triggers (issue 21): `send_at` on the outbox row itself, so a
-- Redis flush or restart loses no scheduled trigger.
--
-- A trigger accepted with a future `send_at` is stored `scheduled`: it is in
-- none of the indexes the drain claims from (they hold `pending` rows only),
-- so a million triggers scheduled for next month cost the drain nothing. The
-- scheduler of every worker (app/dispatch/schedule.py) turns the ones whose
-- time has come `pending`, in one statement, and wakes a drain; from there a
-- scheduled trigger is an ordinary one. `cancelled` is the end of a scheduled
-- trigger its service withdrew before that (DELETE /v1/notifications/triggers/{id}).
-- A wider CHECK (more statuses) is an expand, not a contract: the previous release writes only
-- values it already allowed. The guard counts every DROP CONSTRAINT, so the marker says so:
-- contract: after d91dae9
ALTER TABLE triggers ADD COLUMN send_at timestamptz,
                     ADD COLUMN cancelled_at timestamptz;
ALTER TABLE triggers DROP CONSTRAINT triggers_status_check,
    ADD CONSTRAINT triggers_status_check
        CHECK (status IN ('scheduled', 'pending', 'dispatched', 'cancelled')) NOT VALID;
ALTER TABLE triggers VALIDATE CONSTRAINT triggers_status_check;
CREATE INDEX triggers_scheduled ON triggers (send_at) WHERE status = 'scheduled';
