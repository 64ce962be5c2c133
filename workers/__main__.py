"""`python -m workers`: an RQ worker for the dispatch and delivery queues.

It runs jobs in-process (SimpleWorker: no fork per job; jobs are idempotent
and time-bounded, so per-job process isolation buys nothing) inside one app
context, with RQ's scheduler for delayed retries and the relay that re-enqueues
accepted work whose job was lost.
"""
import os
import sys

from rq import Queue


def main():
    from app.startup import create_app_or_exit
    app = create_app_or_exit()
    domain = app.config["DOMAIN"]
    with app.app_context():
        connection = app.extensions["redis"]
        names = [domain.queues["dispatch"], domain.queues["deliveries"]]
        queues = [Queue(name, connection=connection) for name in names]
        from workers.relay import LeasedWorker, start_relay, worker_lease
        worker = LeasedWorker(queues, connection=connection, name=f"notif-{os.getpid()}")
        worker.lease = worker_lease(app)
        start_relay(app, worker.key)
        burst = "--burst" in sys.argv
        worker.work(with_scheduler=True, burst=burst, logging_level="INFO")


if __name__ == "__main__":
    main()
