"""Run the queued jobs in the test's own process, and let retry back-offs pass at once.

The real RQ worker class and job class (workers.trust.make_worker) in burst mode: every queued
job runs now, then it returns. Retries become deterministic without sleeping: `fast_forward`
moves the jobs waiting for their back-off into their queue, `drain` alternates the two.
"""
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry


class BurstWorker(SimpleWorker):
    """RQ's SimpleWorker (what make_worker builds) without its command channel: a burst run inside a
    test takes no kill or stop command, and leaving that channel costs a second each time (RQ joins
    redis-py's listener thread with a one-second timeout), more than most jobs take."""

    def subscribe(self):
        pass

    def unsubscribe(self):
        pass


def run_jobs(app, purposes=None):
    """Run every queued dispatch and delivery job (or only those of `purposes`) in this process until
    the queues are empty."""
    from workers.trust import PURPOSES, make_worker
    with app.app_context():
        make_worker(app, purposes or PURPOSES, worker_class=BurstWorker).work(burst=True)


def queued(app, purpose):
    """Jobs waiting in the queue of `purpose` ("dispatch", "deliveries")."""
    from app.queues.enqueue import queue
    return queue(purpose, app).count


def _queues(app):
    from workers.trust import worker_queues
    return worker_queues(app)


def scheduled(app):
    """{job id: when it is due} for jobs waiting for their retry back-off."""
    due = {}
    for queue in _queues(app):
        registry = ScheduledJobRegistry(queue=queue)
        for job_id in registry.get_job_ids():
            due[job_id] = registry.get_scheduled_time(job_id)
    return due


def fast_forward(app):
    """Let the back-off pass: every scheduled job goes to its queue now. Returns how many."""
    moved = 0
    for queue in _queues(app):
        registry = ScheduledJobRegistry(queue=queue)
        for job_id in registry.get_job_ids():
            registry.requeue(job_id)
            moved += 1
    return moved


def drain(app, rounds=20):
    """Run jobs and fast-forward until nothing is queued or scheduled."""
    for _ in range(rounds):
        run_jobs(app)
        if not fast_forward(app):
            return
    raise AssertionError("jobs still scheduled after %d rounds" % rounds)
