"""Waking the drain: one drain job (app/dispatch/drain.py) runs after every commit of a trigger,
with one Redis round trip when a drain is already on its way, and none per trigger under gevent
(`Waker` coalesces a process's wake-ups)."""
import logging
import uuid

from flask import current_app

from .enqueue import queue
from .lanes import queue_suffix, rank

log = logging.getLogger(__name__)


def wake_key(app, lane=None):
    """The flag holding the id of a lane's drain job that has not started yet."""
    return app.config["REDIS_PREFIX"] + "dispatch:wake" + queue_suffix(lane)


def wake_dispatcher(app=None, force=False, lane=None):
    """Make sure a drain job of `lane` starts after this moment; returns the id of the job enqueued,
    if one was.

    The flag `<prefix>dispatch:wake[-<lane>]` holds the id of the lane's drain job that has not
    started yet; while it is there, nothing more is needed (that job clears it before it looks for
    triggers). It expires after `relay.stale_after_seconds`, in case its job was lost; `force` (the
    relay) replaces it. The normal lane's job takes no argument, as a release without lanes has it."""
    app = app or current_app
    job_id = f"drain-{uuid.uuid4().hex}"
    ttl = int(app.config["DOMAIN"].relay_stale_after * 1000)
    if not app.extensions["redis"].set(wake_key(app, lane), job_id, nx=not force, px=ttl):
        return None
    args = (lane,) if queue_suffix(lane) else ()
    queue("dispatch", app, lane=lane).enqueue("workers.jobs.drain_triggers", *args, job_id=job_id,
                                              job_timeout=600, result_ttl=60, failure_ttl=7 * 86400)
    return job_id


class Waker:
    """One process's wake-ups, coalesced (under gevent; elsewhere `wake` is `wake_dispatcher`).

    A request that committed a trigger only flags that a wake is due; one greenlet sends it, once
    for all the requests that flagged in the meantime: at a thousand triggers a second most of them
    find the greenlet busy and cost nothing. Every flag set after a commit is followed by a wake
    sent after it (the flag is cleared before each send, so one raised during a send causes
    another), which is all a drain needs. The 202 may go out before the wake does: the wake was
    never part of the guarantee (the relay stands in for a lost one)."""

    def __init__(self, app):
        import gevent.monkey
        self.app, self.due, self.busy = app, set(), False   # due: the lanes to wake
        self.cooperative = gevent.monkey.is_module_patched("socket")

    def wake(self, lane=None):
        if not self.cooperative:
            return wake_dispatcher(self.app, lane=lane)
        self.due.add(lane)
        if not self.busy:          # no preemption between this test and the spawn: greenlets
            self.busy = True
            import gevent
            gevent.spawn(self._send)
        return None

    def _send(self):
        try:
            while self.due:
                lanes, self.due = self.due, set()
                for lane in sorted(lanes, key=lambda lane: rank(lane)):   # the most urgent first
                    try:
                        wake_dispatcher(self.app, lane=lane)
                    except Exception as exc:  # Redis down: the relay will wake a drain
                        log.warning("dispatcher not woken (%s); the relay will", type(exc).__name__)
        finally:
            self.busy = False


def waker(app=None):
    """The process's Waker, made on first use."""
    app = app or current_app._get_current_object()
    if "dispatch_waker" not in app.extensions:
        app.extensions["dispatch_waker"] = Waker(app)
    return app.extensions["dispatch_waker"]


def clear_wake(app, lane=None):
    """The drain job's first step: from now on a new trigger of its lane wakes a new job."""
    try:
        app.extensions["redis"].delete(wake_key(app, lane))
    except Exception:  # Redis down: the flag expires, and the relay wakes a drain meanwhile
        pass
