"""Redis is not trusted with code: what an attacker who can write to Redis can make a worker do.

The attacker enqueues with stock RQ (pickle, the default serializer) and redis-py,
straight into our queues; the worker is the real one (`python -m workers`).
"""
import os
import uuid

import pytest
import redis as redis_lib
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from conftest import SERVICE
from processes import processes, wait_until  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(120)


class Gadget:
    """A pickle gadget: loading it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def attacker_queues(app, serializer=None):
    """Our queues, as seen by someone with nothing but the Redis URL and stock RQ."""
    from app.jobs_queue import queue
    connection = redis_lib.Redis.from_url(app.config["REDIS_URL"])
    return [Queue(queue(p, app).name, connection=connection, serializer=serializer)
            for p in ("dispatch", "deliveries")]


def job_status(app, job_id):
    status = app.extensions["redis"].hget(f"rq:job:{job_id}", "status")
    return status.decode() if status else None


def stored(db):
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM notifications")
        return cur.fetchone()[0]


def test_foreign_functions_and_pickles_never_run_and_the_worker_goes_on(app, clean, db, processes, tmp_path):
    markers = {name: tmp_path / name for name in ("system", "gadget", "json-system", "callback")}
    dispatch, deliveries = attacker_queues(app)
    json_dispatch, _ = attacker_queues(app, JSONSerializer)
    attacks = [
        dispatch.enqueue("os.system", f"touch {markers['system']}", retry=Retry(max=3)),
        deliveries.enqueue("workers.jobs.deliver", Gadget(f"touch {markers['gadget']}")),
        json_dispatch.enqueue("os.system", f"touch {markers['json-system']}", retry=Retry(max=3)),
        json_dispatch.enqueue("workers.jobs.deliver", str(uuid.uuid4()),
                              on_failure=Callback("os.system"), on_success=Callback("os.system")),
    ]
    user = uuid.uuid4()
    worker = processes.start_worker(clean)
    response = app.test_client().post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chat", "event": "message_received", "title": "after the attack", "user_ids": [str(user)]})
    assert response.status_code == 202

    wait_until(lambda: stored(db) == 1, 20, message="the real trigger, enqueued after the attacks, to be stored")
    wait_until(lambda: all(job_status(app, job.id) in ("failed", "finished", "scheduled") for job in attacks), 10,
               message=lambda: f"every attack job taken: {[job_status(app, j.id) for j in attacks]}")
    assert [name for name, path in markers.items() if path.exists()] == [], "an attacker's command ran"
    assert [job_status(app, job.id) for job in attacks] == ["failed"] * len(attacks)
    log = worker.output()
    for job in attacks:
        assert f"refused job {job.id}" in log, log[-3000:]
    assert worker.alive
    # No retry was scheduled for a refused job, whatever it asked for.
    scheduled = app.extensions["redis"].zrange(f"rq:scheduled:{dispatch.name}", 0, -1)
    assert not {job.id.encode() for job in attacks} & set(scheduled)


def test_an_altered_job_of_ours_is_refused(app):
    """Redis written directly: a real job's hash edited to name another function, or to carry callbacks."""
    from app.jobs_queue import queue
    from workers.trust import TrustedJob, refusal
    real = queue("deliveries", app).enqueue("workers.jobs.deliver", str(uuid.uuid4()))
    redis = app.extensions["redis"]
    assert refusal(TrustedJob.fetch(real.id, connection=redis, serializer=JSONSerializer)) is None

    import zlib
    redis.hset(real.key, "data", zlib.compress(b'["subprocess.getoutput", null, ["id"], {}]'))
    assert "not one of this service's job functions" in refusal(
        TrustedJob.fetch(real.id, connection=redis, serializer=JSONSerializer))

    redis.hset(real.key, mapping={"data": zlib.compress(b'["workers.jobs.deliver", null, ["x"], {}]'),
                                  "failure_callback_name": "os.system"})
    altered = TrustedJob.fetch(real.id, connection=redis, serializer=JSONSerializer)
    assert refusal(altered) == "it carries callbacks"
    assert altered.failure_callback is None

    redis.hset(real.key, "data", zlib.compress(b'["workers.jobs.deliver", null, ["a", "b"], {}]'))
    redis.hdel(real.key, "failure_callback_name")
    assert refusal(TrustedJob.fetch(real.id, connection=redis, serializer=JSONSerializer)) == \
        "its arguments do not fit the function"
