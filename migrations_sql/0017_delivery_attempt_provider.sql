-- Provider failover (app/channels/failover.py): the provider an attempt went through, and whether a
-- failed try may still have been accepted by it (a timeout after the request was sent), so a
-- provider that is not idempotent is never tried again for that delivery. Both nullable/defaulted:
-- the previous release's inserts, which name neither, still work during a rolling deploy.
ALTER TABLE delivery_attempts ADD COLUMN provider text;
ALTER TABLE delivery_attempts ADD COLUMN maybe_accepted boolean NOT NULL DEFAULT false;
