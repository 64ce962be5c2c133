"""Is a job still going to run? The relay's checks (workers/relay.py) before it enqueues lost work
again: RQ's own records, read with care for the moments a live worker looks like a dead one."""
import time

from flask import current_app
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.worker import Worker

from .enqueue import SERIALIZER, queue
from .waker import wake_key

ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def dispatch_in_hand(app, lane=None):
    """True when a dispatch job of `lane` is queued, or running on a live worker: its due triggers
    will be taken."""
    q, connection = queue("dispatch", app, lane=lane), app.extensions["redis"]
    woken = connection.get(wake_key(app, lane))
    candidates = (q.get_job_ids(0, 9) + StartedJobRegistry(queue=q).get_job_ids()
                  + [j.decode() for j in connection.lrange(q.intermediate_queue_key, 0, 9)]   # see _stranded
                  + ([woken.decode()] if woken else []))
    return any([job_is_alive(job_id, app) for job_id in candidates])   # each one looked at: drops stranded ones


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
    twice as fast (`python -m bench.faults smtp --full`: 2 of 500 emails failed for good, their
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
