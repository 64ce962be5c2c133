"""Delivery channels behind one small interface; see base.py and registry.py."""

# The in-app channel's name: storing and publishing a notification is its delivery (system.py).
IN_APP = "system"
