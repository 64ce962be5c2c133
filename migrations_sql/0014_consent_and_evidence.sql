-- Issue 20, items 4 and 5: the consent ledger, and what a delivery was decided on.

-- Every contact and preference change, as a versioned record per user
-- (app/consent/). Addresses are never stored here: `address_hash` is a keyed
-- hash (SECRET_KEY) of the address on file when the record was made, so
-- "consent on record for THIS address" can be checked, and the ledger keeps
-- no personal data to erase. `granted` is set only for a change to a group
-- with `requires_consent: true` on a channel that needs an address: true
-- gives consent for that channel and address, false withdraws it; the latest
-- such record decides.
CREATE TABLE consent_records (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id               uuid NOT NULL,
    version               integer NOT NULL,
    at                    timestamptz NOT NULL DEFAULT clock_timestamp(),
    source                text NOT NULL CHECK (source IN ('contact', 'preferences', 'quiet_hours')),
    actor_type            text NOT NULL,
    actor_id              text NOT NULL,
    request_id            text,
    consent_text_version  text,
    customer_id           uuid,
    group_name            text,
    event                 text,
    channel               text,
    address_hash          text,
    granted               boolean,
    change                jsonb NOT NULL,
    UNIQUE (user_id, version)
);
-- The sending rule's lookup: the latest record for a user, channel and address.
CREATE INDEX consent_records_decision ON consent_records (user_id, channel, address_hash, version DESC)
    WHERE granted IS NOT NULL;

-- What the dispatch plan resolved for a delivery (preferences, consent), and
-- what each attempt resolved (preferences, quiet hours, consent): the
-- evidence of GET /v1/notifications/{id}/evidence. NULL for rows written
-- before this release, or by the previous release during a deploy.
ALTER TABLE deliveries ADD COLUMN resolution jsonb;
ALTER TABLE delivery_attempts ADD COLUMN resolution jsonb;
