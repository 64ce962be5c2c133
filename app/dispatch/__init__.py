"""Trigger → accepted durably → stored per user → published → deliveries enqueued."""
