"""Contacts: where a user is reached outside the app (email, phone), in which
locale and time zone. Set and read by services with an API key."""
