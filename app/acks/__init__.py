"""Acknowledgements: notices a user must acknowledge, their deadline and escalation steps."""
