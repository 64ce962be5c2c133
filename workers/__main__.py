"""`python -m workers`: an RQ worker for the dispatch and delivery queues.

It runs jobs in-process (SimpleWorker: no fork per job; jobs are idempotent
and time-bounded, so per-job process isolation buys nothing), only this
project's own job functions read as JSON (workers/trust.py), inside one app
context, with RQ's scheduler for delayed retries and the relay that re-enqueues
accepted work whose job was lost. A Redis outage does not end the process: RQ
gives up when Redis disappears in the middle of a job, so the worker is started
again once Redis answers.
"""
import logging
import os
import sys
import time

import redis

log = logging.getLogger("workers")


def main():
    from app.startup import create_app_or_exit
    app = create_app_or_exit(check_role=True)
    with app.app_context():
        connection = app.extensions["redis"]
        from workers.relay import LeasedWorker, start_relay, worker_lease
        from workers.trust import make_worker
        # Built before anything uses the connection: RQ raises the pool's socket timeout above
        # its blocking dequeue's, which only connections made afterwards get.
        worker = make_worker(app, worker_class=LeasedWorker, name=f"notif-{os.getpid()}")
        start_relay(app, worker.key)
        burst = "--burst" in sys.argv
        while True:
            worker.lease = worker_lease(app)
            try:
                worker.work(with_scheduler=True, burst=burst, logging_level="INFO")
                return
            except redis.exceptions.ConnectionError as exc:
                # RQ retries a lost Redis only while it waits for a job; lost during one, it quits.
                # The job's committed work stands and the relay re-enqueues the rest: start again.
                log.warning("worker lost Redis (%s); starting again once it answers", exc)
                _wait_for(connection)
                worker = make_worker(app, worker_class=LeasedWorker, name=worker.name)


def _wait_for(connection, delay=0.5):
    while True:
        try:
            connection.ping()
            return
        except redis.exceptions.ConnectionError:
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


if __name__ == "__main__":
    main()
