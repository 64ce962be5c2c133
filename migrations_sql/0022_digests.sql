-- Digests (notifications.yaml `digest:`): a user's deliveries on one channel within a window go out as
-- one message at its end. A delivery joins the open digest of its user, channel and scope (the group,
-- or group.event); the first delivery due after the window (or at max_items) becomes its `sender` and
-- sends it; every other item takes the sender's outcome. All state is here, none in Redis, so a worker
-- killed mid-window loses nothing and the digest goes out once (app/deliveries/digest.py).
CREATE TABLE digests (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    channel     text NOT NULL,
    scope       text NOT NULL,
    window_end  timestamptz NOT NULL,
    sender      uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX digests_open ON digests (user_id, channel, scope) WHERE sender IS NULL;

ALTER TABLE deliveries ADD COLUMN digest_id uuid;
CREATE INDEX deliveries_digest ON deliveries (digest_id) WHERE digest_id IS NOT NULL;
