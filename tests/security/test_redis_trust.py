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

from testkit.api import live_notification
from testkit.identity import SERVICE, bearer
from testkit.processes import tls_redis_server, wait_until

pytestmark = pytest.mark.timeout(120)


class Gadget:
    """A pickle gadget: loading it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def attacker_queues(app, serializer=None):
    """Our queues, as seen by someone with nothing but the Redis URL and stock RQ."""
    from app.queues.enqueue import queue
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_altered_job_of_ours_is_refused(app):
    """Redis written directly: a real job's hash edited to name another function, or to carry callbacks."""
    from app.queues.enqueue import queue
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


# ------------------------------------------------------------------ two deployments, one Redis


def test_the_default_prefix_is_the_databases_own_and_an_explicit_one_wins(clean, other_database):
    from app import create_app
    from app.bus.deployment import derive_prefix
    mine, other = derive_prefix(clean["DATABASE_URL"]), derive_prefix(other_database)
    assert mine != other and mine.startswith("notif:") and mine.endswith(":")
    assert derive_prefix(clean["DATABASE_URL"]) == mine                 # stable: web, worker, release agree
    derived = create_app({k: v for k, v in clean.items() if k != "REDIS_PREFIX"})
    assert derived.config["REDIS_PREFIX"] == mine
    from app.queues.enqueue import queue_name
    assert queue_name("dispatch", derived) == mine + derived.config["DOMAIN"].queues["dispatch"]
    assert create_app(dict(clean, REDIS_PREFIX="acme:")).config["REDIS_PREFIX"] == "acme:"


@pytest.mark.slow
def test_two_deployments_on_one_redis_never_hear_or_take_each_others_work(clean, other_database, processes):
    """Deployment A on Redis db 0, B on db 7 of the same server, neither configures REDIS_PREFIX."""
    from app.bus.deployment import derive_prefix
    base = {k: v for k, v in clean.items() if k != "REDIS_PREFIX"}
    redis_url = clean["REDIS_URL"].rsplit("/", 1)[0]
    env_a = dict(base, REDIS_URL=f"{redis_url}/0")
    env_b = dict(base, REDIS_URL=f"{redis_url}/7", DATABASE_URL=other_database)
    web_a, web_b = processes.start_web(env_a), processes.start_web(env_b)
    processes.start_worker(env_b)                                        # A has no worker yet
    redis_a = redis_lib.Redis.from_url(env_a["REDIS_URL"])
    dispatch_a = f"rq:queue:{derive_prefix(clean['DATABASE_URL'])}notifications-dispatch"

    user = uuid.uuid4()                                                  # the same user id on both
    stream_a, stream_b = web_a.stream(headers=bearer(user)), web_b.stream(headers=bearer(user))
    try:
        assert stream_a.ok and stream_b.ok
        body = {"type": "tasks", "event": "task_due", "user_ids": [str(user)]}
        assert web_a.post("/v1/notifications/trigger", headers=SERVICE, json=dict(body, title="from A")).ok
        wait_until(lambda: redis_a.llen(dispatch_a) == 1, 10, message="A's drain job in A's own queue")
        assert web_b.post("/v1/notifications/trigger", headers=SERVICE, json=dict(body, title="from B")).ok
        stream_b.wait_events(1)
        # B's worker took B's job, enqueued after A's, and left A's where it was.
        assert redis_a.llen(dispatch_a) == 1

        processes.start_worker(env_a)
        stream_a.wait_events(1)
        assert web_a.post("/v1/notifications/sse", headers=SERVICE, json=dict(body, title="A push")).ok
        stream_a.wait_events(2)
        # A fence: B's own push, published after everything of A's; B's hub would have passed A's
        # messages on before it.
        assert web_b.post("/v1/notifications/sse", headers=SERVICE, json=dict(body, title="B push")).ok
        stream_b.wait_events(2)
        assert [e.json()["title"] for e in stream_a.events] == ["from A", "A push"]
        assert [e.json()["title"] for e in stream_b.events] == ["from B", "B push"]
    finally:
        stream_a.close()
        stream_b.close()


# ------------------------------------------------------------------ the documented ACL user


def acl_rule(prefix, password):
    """docs/security/rq.md's ACL for a deployment whose REDIS_PREFIX is `prefix`."""
    return (f"on >{password} resetkeys ~{prefix}* ~rq:* resetchannels &{prefix}* &rq:* "
            "+@all -@admin -@dangerous +info +client|setname +client|getname").split()


@pytest.mark.slow
def test_web_and_worker_run_as_the_documented_acl_user_and_it_reaches_no_other_keys(clean, processes):
    from devtools.services import redis_server
    from app.bus.deployment import derive_prefix
    prefix, password = derive_prefix(clean["DATABASE_URL"]), uuid.uuid4().hex
    server = redis_server()
    try:
        admin = redis_lib.Redis.from_url(server.url)
        admin.acl_setuser("notifications", reset=True)
        admin.execute_command("ACL", "SETUSER", "notifications", *acl_rule(prefix, password))
        admin.execute_command("ACL", "SETUSER", "default", "off")          # no anonymous access left
        url = f"redis://notifications:{password}@127.0.0.1:{server.port}/0"
        env = dict({k: v for k, v in clean.items() if k != "REDIS_PREFIX"}, REDIS_URL=url)
        web = processes.start_web(env)
        processes.start_worker(env)
        assert live_notification(web, "via ACL")["title"] == "via ACL"
        confined = redis_lib.Redis.from_url(url)
        with pytest.raises(redis_lib.exceptions.NoPermissionError):
            confined.set("notif:another-deployment:x", "1")
        with pytest.raises(redis_lib.exceptions.NoPermissionError):
            confined.publish("notif:another-deployment:user:x", "1")
        with pytest.raises(redis_lib.exceptions.AuthenticationError):
            redis_lib.Redis.from_url(server.url).ping()
    finally:
        server.stop()


# ------------------------------------------------------------------ TLS (rediss://)


@pytest.mark.slow
def test_worker_and_web_enqueue_over_tls(clean, make_app, processes, tmp_path, db):
    """The command pool and RQ over rediss:// with a private CA (streams over TLS: tests/deploy/test_tls.py)."""
    started = tls_redis_server(tmp_path)
    if started is None:
        pytest.skip("no TLS-capable redis-server and openssl on this machine")
    proc, url = started
    try:
        app = make_app(REDIS_URL=url)
        processes.start_worker(dict(clean, REDIS_URL=url))
        assert app.test_client().post("/v1/notifications/trigger", headers=SERVICE, json={
            "type": "tasks", "event": "task_due", "title": "over TLS", "user_ids": [str(uuid.uuid4())]}
        ).status_code == 202
        wait_until(lambda: stored(db) == 1, 20, message="the trigger to be stored by the worker over TLS")
        with pytest.raises(redis_lib.ConnectionError):     # nothing answers in clear on that port
            redis_lib.Redis.from_url(url.replace("rediss://", "redis://").split("?")[0],
                                     socket_connect_timeout=2, socket_timeout=2).ping()
    finally:
        proc.kill()
        proc.wait()
