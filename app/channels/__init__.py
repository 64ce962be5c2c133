"""Delivery channels behind one small interface; see base.py and registry.py."""
