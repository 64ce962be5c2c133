"""A job read from Redis is data, never code: the worker runs only this project's job functions.

Whoever can write to our Redis can put a job in our queues. Stock RQ would unpickle
its payload (a pickle runs code as it loads), import whatever function it names,
and call the callbacks and webhooks it lists, in the process that holds the
database, SMTP and SMS credentials. Here:

- every queue and the worker speak RQ's JSONSerializer (app/queues/enqueue.py): a
  payload that is not JSON, such as a pickle, fails to load and is never run;
- `TrustedJob` looks a job's function up in `workers.jobs.JOBS` by name, never by
  import; a job that names anything else, is bound to an instance, carries
  callbacks or webhooks, or whose arguments do not fit the function, raises
  `RefusedJob` instead of running. RQ then fails it (never retried) and this
  module logs a warning naming the job, its queue and why.

What a Redis writer can still do is enqueue one of our own jobs with ids of its
choosing; those jobs re-read their state from PostgreSQL and are safe to run twice,
which is what the relay does anyway. Redis AUTH/ACLs and TLS keep writers out
(docs/security/rq.md).
"""
import inspect
import logging

from rq import SimpleWorker
from rq.exceptions import DeserializationError
from rq.job import Job

from app.queues.enqueue import PURPOSES, SERIALIZER, queue

log = logging.getLogger(__name__)


class RefusedJob(Exception):
    """This worker does not run that job."""


def refusal(job):
    """Why `job` must not run, or None when it is one of ours, called the way we call it."""
    from workers.jobs import JOBS
    try:
        instance, args, kwargs = job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its payload is not JSON"
    name = job.func_name
    if not isinstance(name, str) or name not in JOBS:
        return f"{str(name)[:80]!r} is not one of this service's job functions"
    if instance is not None:
        return "it is bound to an instance"
    if job._success_callback_name or job._failure_callback_name or job._stopped_callback_name:
        return "it carries callbacks"
    if job.webhooks:
        return "it carries webhooks"
    if not isinstance(args, list) or not isinstance(kwargs, dict) \
            or not all(isinstance(a, str) for a in [*args, *kwargs.values()]):
        return "its arguments are not ids"
    try:
        inspect.signature(JOBS[name]).bind(*args, **kwargs)
    except TypeError:
        return "its arguments do not fit the function"
    return None


def _readable_func_name(job):
    """RQ reads the name for its process title before running the job: a payload that does not
    load must reach `_execute` (to be refused, logged, not retried), not fail on the way."""
    try:
        return Job.func_name.fget(job)
    except DeserializationError:
        return "<unreadable>"


class TrustedJob(Job):
    """An RQ job that can only run a function of `workers.jobs.JOBS`, and nothing around it."""

    func_name = property(_readable_func_name, Job.func_name.fset)

    @property
    def func(self):
        from workers.jobs import JOBS
        why = refusal(self)
        if why is not None:
            raise RefusedJob(why)
        return JOBS[self.func_name]

    def _execute(self):
        why = refusal(self)
        if why is not None:
            log.warning("refused job %s from queue %s: %s", self.id, self.origin, why)
            self._refused = True
            raise RefusedJob(why)
        return super()._execute()

    @property
    def should_retry(self):
        return not getattr(self, "_refused", False) and super().should_retry

    # Never import a callback named in Redis, nor call a URL listed there.
    success_callback = failure_callback = stopped_callback = property(lambda self: None)

    def send_webhooks(self, status, *, exc_string=None):
        return None


def worker_queues(app, purposes=PURPOSES):
    """The queues a worker takes jobs from, reading them as TrustedJobs: its lanes (WORKER_LANES)
    from the most urgent, dispatch before deliveries in each (RQ serves them in this order)."""
    return [queue(purpose, app, job_class=TrustedJob, lane=lane)
            for lane in app.config["WORKER_LANES"] for purpose in purposes]


def make_worker(app, purposes=PURPOSES, worker_class=SimpleWorker, **options):
    """An RQ worker that reads JSON and runs only our jobs (the entry point's, and the tests')."""
    return worker_class(worker_queues(app, purposes), connection=app.extensions["redis"],
                        job_class=TrustedJob, serializer=SERIALIZER, **options)
