"""The RQ job functions. They take ids, re-read state and are safe to run twice.

They run inside the worker's app context (workers/__main__.py).
"""
from app.deliveries.deliver import deliver as _deliver
from app.dispatch.fanout import dispatch_trigger as _dispatch


def dispatch_trigger(trigger_id):
    """Store, publish and enqueue deliveries for one accepted trigger."""
    return _dispatch(trigger_id)


def deliver(delivery_id):
    """One attempt of one external delivery."""
    return _deliver(delivery_id)


def purge_expired():
    """Delete notifications past their group's retention (app/retention.py); {group: deleted},
    or None when another worker is purging."""
    from flask import current_app
    from app.retention import purge_exclusive
    return purge_exclusive(current_app._get_current_object())
