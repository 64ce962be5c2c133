"""The dispatch job: store every due trigger, then stop.

The trigger rows are the outbox, so nothing is enqueued per trigger. An
accepted trigger only makes sure a drain job will run after its commit
(`queues.waker.wake_dispatcher`: a flag set with SET NX, and one RQ job
enqueued when the flag was absent). The job clears the flag first thing and
then drains until nothing is due: a trigger committed before the flag was
cleared is seen by the drain, one committed after sets the flag again and
enqueues the next job. Under a steady stream of triggers, one job runs for
`DRAIN_SECONDS` and hands over to the next, instead of a job per trigger.

Each round stores one batch of small triggers (app/dispatch/batch.py) and at
most one big trigger (app/dispatch/fanout.py), so neither kind starves the
other; several workers drain side by side, their claims never overlap. A
batch that fails for a reason other than PostgreSQL or Redis failing is
retried one trigger at a time, and a trigger that fails on its own is
deferred with back-off (`repository.defer`): still pending, never in the
way of the others. The relay (workers/relay.py) wakes a drain when a due
trigger has waited past `relay.stale_after_seconds` with no drain job alive
(the flag or the job lost with Redis, a worker killed).
"""
import logging
import time

from .. import db
from ..domain import LANES
from ..queues.enqueue import higher_waiting
from ..queues.waker import clear_wake, wake_dispatcher
from ..redact import summary
from . import repository
from .batch import INFRASTRUCTURE_ERRORS, BatchFailed, store_batch
from .fanout import dispatch_big

log = logging.getLogger(__name__)
DRAIN_SECONDS = 60   # then the job hands over to a fresh one (RQ's job timeout is 600 s)


def drain(app, should_stop=lambda: False, seconds=DRAIN_SECONDS, lane=None):
    """Store the due triggers of `lane` (None: of every lane, the most urgent first) until none is
    left; returns how many were dispatched or deferred.

    Stops early, handing the rest to a new job, when `should_stop()` (worker shutdown), after
    `seconds`, or when a higher lane has work waiting (app/queues/lanes.py: the big trigger's
    fan-out yields between chunks)."""
    if lane is None:
        return sum(drain(app, should_stop, seconds, each) for each in LANES)
    clear_wake(app, lane)
    deadline = time.monotonic() + seconds
    total = 0
    stop = lambda: should_stop() or higher_waiting(app, lane)   # noqa: E731
    with db.connection() as conn:
        while True:
            done = _small(app, conn, lane) + _big(app, conn, stop, lane)
            total += done
            if not done:
                return total
            if stop() or time.monotonic() > deadline:
                _hand_over(app, lane)
                return total


def _small(app, conn, lane):
    try:
        return store_batch(app, conn, lane=lane)
    except BatchFailed as failed:
        log.warning("batch of %d trigger(s) failed (%s); storing them one by one", len(failed.trigger_ids),
                    summary(failed.cause))
        trigger_ids = failed.trigger_ids
    done = 0
    for trigger_id in trigger_ids:
        try:
            done += store_batch(app, conn, only=[trigger_id], lane=lane)
        except BatchFailed as alone:
            _defer(conn, trigger_id, alone.cause)
            done += 1
    return done


def _big(app, conn, should_stop, lane):
    """Store (the rest of) the oldest big trigger no other job holds; 1 when one was worked on."""
    candidates = repository.big_candidates(conn, app.config["DOMAIN"].chunk_size(lane), lane=lane)
    conn.commit()
    for trigger_id in candidates:
        try:
            if dispatch_big(app, conn, trigger_id, should_stop) is not None:
                return 1
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            _defer(conn, trigger_id, exc)
            return 1
    return 0


def _defer(conn, trigger_id, cause):
    """Log and record the failure as `redact.summary` has it: a database error's text quotes the
    row's values (addresses, notification text), which neither a log nor `last_error` may hold."""
    error = summary(cause)
    log.error("trigger %s could not be dispatched (%s); it stays pending and is tried again later",
              trigger_id, error)
    with db.transaction(conn):
        repository.defer(conn, trigger_id, error)


def _hand_over(app, lane):
    try:
        wake_dispatcher(app, lane=lane)
    except Exception as exc:  # Redis down: the relay wakes a drain once Redis is back
        log.warning("drain could not hand over (%s); the relay will", type(exc).__name__)
