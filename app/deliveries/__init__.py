"""Delivery of one notification on one external channel, with its attempts."""
