"""Putting work on the RQ queues: names, job ids and retry policy in one place.

Delivery job ids are derived from what the job works on (`deliver-<delivery>`),
so the relay can ask RQ whether a job is still alive before enqueuing it
again (app/queues/liveness.py). Dispatch has no job per trigger: the waker
(app/queues/waker.py) makes sure one drain job (app/dispatch/drain.py) runs
after the caller's commit.

Every queue here speaks RQ's JSONSerializer: a job read back from Redis is data,
never a pickle (workers/trust.py says what the worker then agrees to run).
"""
from flask import current_app
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from ..domain import LANES
from .lanes import queue_suffix, rank

SERIALIZER = JSONSerializer      # pickle would run code from whoever can write to Redis
PURPOSES = ("dispatch", "deliveries")


def queue_name(purpose, app=None, lane=None):
    """The deployment's RQ queue for `purpose` in `lane` (default normal): queue.yaml's name under
    REDIS_PREFIX, so that two deployments on one Redis never take each other's jobs
    (app/bus/deployment.py), with the lane's suffix (app/queues/lanes.py)."""
    app = app or current_app
    return app.config["REDIS_PREFIX"] + app.config["DOMAIN"].queues[purpose] + queue_suffix(lane)


def queue(purpose, app=None, job_class=None, lane=None):
    app = app or current_app
    return Queue(queue_name(purpose, app, lane), connection=app.extensions["redis"], serializer=SERIALIZER,
                 **({"job_class": job_class} if job_class else {}))


def higher_waiting(app, lane):
    """True when a lane above `lane` has a job waiting (dispatch or deliveries): a drain of `lane`
    hands over (app/queues/lanes.py). One pipelined LLEN per queue; Redis failing counts as nothing
    waiting."""
    above = LANES[:rank(lane)]
    if not above:
        return False
    try:
        with app.extensions["redis"].pipeline(transaction=False) as pipe:
            for higher in above:
                for purpose in PURPOSES:
                    pipe.llen(Queue.redis_queue_namespace_prefix + queue_name(purpose, app, higher))
            return any(pipe.execute())
    except Exception:
        return False


def deliver_job_id(delivery_id):
    return f"deliver-{delivery_id}"


def enqueue_deliveries(delivery_ids, app=None, lane=None):
    """One job per delivery on its lane's queue, retried with the back-off of queue.yaml (a retry
    goes back to the queue the job came from: its lane)."""
    app = app or current_app
    domain = app.config["DOMAIN"]
    q = queue("deliveries", app, lane=lane)
    retry = None
    if domain.retry_attempts > 1:
        retry = Retry(max=domain.retry_attempts - 1, interval=list(domain.retry_backoff) or 0)
    jobs = [Queue.prepare_data("workers.jobs.deliver", (str(d),), job_id=deliver_job_id(d), retry=retry,
                               timeout=120, result_ttl=60, failure_ttl=7 * 86400)
            for d in delivery_ids]
    if jobs:
        q.enqueue_many(jobs)
    return len(jobs)


def enqueue_on_their_lanes(app, conn, delivery_ids):
    """Enqueue deliveries written outside the fan-out (a fallback, an escalation step, a retry) each
    on its trigger's lane, read in a transaction of its own on `conn` after the caller committed."""
    if not delivery_ids:
        return
    from .. import db
    from ..deliveries.repository import lanes
    with db.transaction(conn):
        by_lane = lanes(conn, delivery_ids)
    for lane, ids in by_lane.items():
        enqueue_deliveries(ids, app, lane)


def schedule_delivery(delivery_id, at, app=None, lane=None):
    """Run a held delivery at `at` (RQ's scheduler), on its lane's queue. Its own job id, so it
    cannot collide with the job that is holding it right now."""
    return queue("deliveries", app, lane=lane).enqueue_at(at, "workers.jobs.deliver", str(delivery_id),
                                               job_id=f"{deliver_job_id(delivery_id)}-at-{int(at.timestamp())}",
                                               job_timeout=120, result_ttl=60, failure_ttl=7 * 86400)
