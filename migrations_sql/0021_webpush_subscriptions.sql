-- A browser's Web Push subscription (RFC 8030): where the service POSTs a user's notifications
-- when no tab holds the stream. At most 10 a user (app/webpush/repository.py); one per endpoint.
CREATE TABLE webpush_subscriptions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL,
    endpoint    text NOT NULL UNIQUE,
    p256dh      text NOT NULL,
    auth        text NOT NULL,
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webpush_subscriptions_user ON webpush_subscriptions (user_id, created_at);
