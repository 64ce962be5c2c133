"""The layout of app/ stays navigable: no import cycle among its modules, few top-level modules;
and what was removed with the layout work stays removed."""
import uuid

from rq.serializers import JSONSerializer


def test_a_dispatch_job_queued_by_an_earlier_release_is_refused(app):
    """Releases before the outbox queued one `workers.jobs.dispatch_trigger` job per trigger; the
    drain stores every pending trigger now, so such a job is not ours any more: refused, never run."""
    from app.queues.enqueue import queue
    from workers.jobs import JOBS
    from workers.trust import TrustedJob, refusal
    legacy = queue("dispatch", app).enqueue("workers.jobs.dispatch_trigger", str(uuid.uuid4()))
    job = TrustedJob.fetch(legacy.id, connection=app.extensions["redis"], serializer=JSONSerializer)
    assert refusal(job) == "'workers.jobs.dispatch_trigger' is not one of this service's job functions"
    assert sorted(JOBS) == ["workers.jobs.deliver", "workers.jobs.drain_triggers", "workers.jobs.purge_expired"]
