-- Where a user is reached outside the app; set by services with an API key.
CREATE TABLE contacts (
    user_id     uuid PRIMARY KEY,
    email       text,
    phone       text,
    locale      text,
    timezone    text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
