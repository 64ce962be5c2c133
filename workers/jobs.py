"""The RQ job functions. They take ids, re-read state and are safe to run twice.

They run inside the worker's app context (workers/__main__.py).
"""
import threading

from flask import current_app

from app.deliveries.deliver import deliver as _deliver
from app.dispatch.drain import drain

# Set when this worker was asked to stop (SIGTERM: RQ's warm shutdown): a drain hands over
# between batches instead of running on (workers/relay.py LeasedWorker sets it).
SHUTDOWN = threading.Event()


def drain_triggers(lane="normal"):
    """Store, publish and enqueue deliveries for every pending trigger of the lane (app/dispatch/drain.py)."""
    return drain(current_app._get_current_object(), should_stop=SHUTDOWN.is_set, lane=lane)


def deliver(delivery_id):
    """One attempt of one external delivery."""
    return _deliver(delivery_id)


def purge_expired():
    """Delete notifications past their group's retention (app/history/retention.py); {group: deleted},
    or None when another worker is purging."""
    from app.history.retention import purge_exclusive
    return purge_exclusive(current_app._get_current_object())


# The only functions a worker runs, by the name a job carries (workers/trust.py refuses any other).
JOBS = {f"{__name__}.{job.__name__}": job for job in (drain_triggers, deliver, purge_expired)}
