"""Putting work on the RQ queues: names, job ids and retry policy in one place.

Delivery job ids are derived from what the job works on (`deliver-<delivery>`),
so the relay can ask RQ whether a job is still alive before enqueuing it
again. Dispatch has no job per trigger: `wake_dispatcher` makes sure one drain
job (app/dispatch/drain.py) runs after the caller's commit, with one Redis
round trip when a drain is already on its way.

Every queue here speaks RQ's JSONSerializer: a job read back from Redis is data,
never a pickle (workers/trust.py says what the worker then agrees to run).
"""
import logging
import time
import uuid

from flask import current_app
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

log = logging.getLogger(__name__)
ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
SERIALIZER = JSONSerializer      # pickle would run code from whoever can write to Redis
PURPOSES = ("dispatch", "deliveries")


def queue_name(purpose, app=None):
    """The deployment's RQ queue for `purpose`: queue.yaml's name under REDIS_PREFIX, so that two
    deployments on one Redis never take each other's jobs (app/bus/deployment.py)."""
    app = app or current_app
    return app.config["REDIS_PREFIX"] + app.config["DOMAIN"].queues[purpose]


def queue(purpose, app=None, job_class=None):
    app = app or current_app
    return Queue(queue_name(purpose, app), connection=app.extensions["redis"], serializer=SERIALIZER,
                 **({"job_class": job_class} if job_class else {}))


def deliver_job_id(delivery_id):
    return f"deliver-{delivery_id}"


def _wake_key(app):
    return app.config["REDIS_PREFIX"] + "dispatch:wake"


def wake_dispatcher(app=None, force=False):
    """Make sure a drain job starts after this moment; returns the id of the job enqueued, if one was.

    The flag `<prefix>dispatch:wake` holds the id of a drain job that has not started yet; while it
    is there, nothing more is needed (that job clears it before it looks for triggers). It expires
    after `relay.stale_after_seconds`, in case its job was lost; `force` (the relay) replaces it."""
    app = app or current_app
    job_id = f"drain-{uuid.uuid4().hex}"
    ttl = int(app.config["DOMAIN"].relay_stale_after * 1000)
    if not app.extensions["redis"].set(_wake_key(app), job_id, nx=not force, px=ttl):
        return None
    queue("dispatch", app).enqueue("workers.jobs.drain_triggers", job_id=job_id, job_timeout=600,
                                   result_ttl=60, failure_ttl=7 * 86400)
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
        self.app, self.due, self.busy = app, False, False
        self.cooperative = gevent.monkey.is_module_patched("socket")

    def wake(self):
        if not self.cooperative:
            return wake_dispatcher(self.app)
        self.due = True
        if not self.busy:          # no preemption between this test and the spawn: greenlets
            self.busy = True
            import gevent
            gevent.spawn(self._send)
        return None

    def _send(self):
        try:
            while self.due:
                self.due = False
                try:
                    wake_dispatcher(self.app)
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


def clear_wake(app):
    """The drain job's first step: from now on a new trigger wakes a new job."""
    try:
        app.extensions["redis"].delete(_wake_key(app))
    except Exception:  # Redis down: the flag expires, and the relay wakes a drain meanwhile
        pass


def dispatch_in_hand(app):
    """True when a dispatch job is queued, or running on a live worker: due triggers will be taken."""
    q, connection = queue("dispatch", app), app.extensions["redis"]
    woken = connection.get(_wake_key(app))
    candidates = (q.get_job_ids(0, 9) + StartedJobRegistry(queue=q).get_job_ids()
                  + [j.decode() for j in connection.lrange(q.intermediate_queue_key, 0, 9)]   # see _stranded
                  + ([woken.decode()] if woken else []))
    return any([job_is_alive(job_id, app) for job_id in candidates])   # each one looked at: drops stranded ones


def enqueue_deliveries(delivery_ids, app=None):
    """One job per delivery, retried with the back-off of queue.yaml."""
    app = app or current_app
    domain = app.config["DOMAIN"]
    q = queue("deliveries", app)
    retry = None
    if domain.retry_attempts > 1:
        retry = Retry(max=domain.retry_attempts - 1, interval=list(domain.retry_backoff) or 0)
    jobs = [Queue.prepare_data("workers.jobs.deliver", (str(d),), job_id=deliver_job_id(d), retry=retry,
                               timeout=120, result_ttl=60, failure_ttl=7 * 86400)
            for d in delivery_ids]
    if jobs:
        q.enqueue_many(jobs)
    return len(jobs)


def job_is_alive(job_id, app=None):
    """True when RQ still holds the job and a live worker (or the queue) will run it."""
    app = app or current_app
    connection = app.extensions["redis"]
    try:
        job = Job.fetch(job_id, connection=connection, serializer=SERIALIZER)
    except Exception:
        return False
    status = job.get_status(refresh=False)
    if status not in ALIVE:
        return False
    if status == JobStatus.QUEUED and _stranded(job, connection):
        return False
    if status == JobStatus.STARTED and job.worker_name:
        return Worker.find_by_key(Worker.redis_worker_namespace_prefix + job.worker_name,
                                  connection=connection) is not None
    return True


def _stranded(job, connection, settle=1.0):
    """A worker killed between taking the job off its queue (BLPOP, or LMOVE to RQ's intermediate
    list) and marking it started leaves it `queued` in no queue at all: nobody would ever run it.
    Such a job is dead (dropped from the intermediate list, so RQ does not fail the new copy
    later) and the caller enqueues it again.

    A live worker passes through the same state on every job, for milliseconds (longer when the
    relay's own thread holds the GIL of that worker's process). Judged at a glance, a delivery
    retried after a back-off as long as `relay.stale_after` was now and then caught there under
    a backlog, and the copy started a second retry chain that spent the delivery's attempts
    twice as fast (`bench/faults.py smtp --full`: 2 of 500 emails failed for good, their
    back-off restarting from 1 s mid-outage). So the job must stay unstarted and off its queue
    for `settle` seconds to count as stranded. (RQ's started registry is no help: it may still hold an entry of an earlier,
    killed execution of the same job id.)"""
    queue_ = Queue(job.origin, connection=connection, serializer=SERIALIZER)
    deadline = time.monotonic() + settle
    while True:
        if connection.lpos(queue_.key, job.id) is not None or job.get_status(refresh=True) != JobStatus.QUEUED:
            return False
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    connection.lrem(queue_.intermediate_queue_key, 0, job.id)
    return True


def schedule_delivery(delivery_id, at, app=None):
    """Run a held delivery at `at` (RQ's scheduler). Its own job id, so it cannot
    collide with the job that is holding it right now."""
    return queue("deliveries", app).enqueue_at(at, "workers.jobs.deliver", str(delivery_id),
                                               job_id=f"{deliver_job_id(delivery_id)}-at-{int(at.timestamp())}",
                                               job_timeout=120, result_ttl=60, failure_ttl=7 * 86400)
