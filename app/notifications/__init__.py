"""The inbox: a user's stored notifications over REST."""
