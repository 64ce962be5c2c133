"""A 202 is never lost: Redis down at accept time, PostgreSQL down, a worker SIGKILLed mid-dispatch.

The relay (workers/relay.py) re-enqueues accepted work whose RQ job is gone;
the jobs are idempotent, so recovering never stores a notification twice.
"""
import time
import uuid

import psycopg2
import pytest

from testkit.api import TRIGGER_PATH as TRIGGER, trigger_body
from testkit.config_files import queue_yaml
from testkit.identity import SERVICE
from testkit.jobs import queued, run_jobs
from testkit.processes import kill_when
from testkit.rows import scalar


def age_triggers(db, seconds=120):
    """Make every trigger look older, so the relay's stale_after has passed without waiting."""
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET created_at = created_at - make_interval(secs => %s)", (seconds,))


# ---------------------------------------------------------------- Redis down at accept time


def test_redis_down_trigger_still_accepted_then_relayed(make_app, redis_proc, db, tmp_path):
    from workers.relay import sweep
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, relay={"interval_seconds": 1,
                                                                  "stale_after_seconds": 1}))
    client = app.test_client()
    users = [uuid.uuid4() for _ in range(3)]
    redis_proc.stop()
    try:
        r = client.post(TRIGGER, json=trigger_body(users), headers=dict(SERVICE, **{"Idempotency-Key": "r-1"}))
        assert r.status_code == 202, r.get_data(as_text=True)
        trigger_id = r.get_json()["trigger_id"]
        assert scalar(db, "SELECT status FROM triggers WHERE id = %s", trigger_id) == "pending"
        # a retry of the same request while Redis is still down gets the same answer
        again = client.post(TRIGGER, json=trigger_body(users), headers=dict(SERVICE, **{"Idempotency-Key": "r-1"}))
        assert again.status_code == 202 and again.get_json() == r.get_json()
    finally:
        redis_proc.start()
    # Redis came back empty: the job is gone, only the row remembers the trigger
    assert queued(app, "dispatch") == 0
    # not stale yet: the relay leaves a fresh trigger to its own enqueue
    assert sweep(app) == (0, 0)
    age_triggers(db)
    assert sweep(app) == (1, 0)
    assert sweep(app) == (0, 0)            # its job is queued now: not enqueued twice
    assert queued(app, "dispatch") == 1
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications WHERE trigger_id = %s", trigger_id) == 3
    assert scalar(db, "SELECT status FROM triggers WHERE id = %s", trigger_id) == "dispatched"
    assert sweep(app) == (0, 0)


def test_relay_leaves_a_queued_job_alone_and_requeues_a_lost_one(make_app, db, tmp_path):
    from workers.relay import sweep
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, relay={"stale_after_seconds": 1}))
    client = app.test_client()
    assert client.post(TRIGGER, json=trigger_body([uuid.uuid4()]), headers=SERVICE).status_code == 202
    age_triggers(db)
    assert sweep(app) == (0, 0)            # queued and alive
    app.extensions["redis"].flushall()     # Redis restarted without persistence
    assert sweep(app) == (1, 0)
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications") == 1


def test_relay_requeues_lost_deliveries(make_app, db, tmp_path, smtp):
    from workers.relay import sweep
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, relay={"stale_after_seconds": 1}),
                   MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port))
    client = app.test_client()
    users = [uuid.uuid4(), uuid.uuid4()]
    with db.cursor() as cur:   # with an address, so each email delivery gets a job
        for user_id in users:
            cur.execute("INSERT INTO contacts (user_id, email) VALUES (%s, %s)", (user_id, f"{user_id.hex}@example.org"))
    assert client.post(TRIGGER, json=trigger_body(users), headers=SERVICE).status_code == 202
    # run only the dispatch job, then lose the delivery jobs it enqueued
    with app.app_context():
        from app.dispatch.drain import drain
        drain(app)
    assert queued(app, "deliveries") == 2
    app.extensions["redis"].flushall()
    with db.cursor() as cur:
        cur.execute("UPDATE deliveries SET updated_at = now() - interval '1 minute' WHERE status = 'pending'")
    assert sweep(app) == (0, 2)
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") == 0
    assert scalar(db, "SELECT count(*) FROM delivery_attempts") == 2
    assert len(smtp.messages) == 2


def test_relay_leaves_alone_a_delivery_job_a_live_worker_is_taking(make_app, db, tmp_path):
    """Found by `python -m bench.faults smtp --full`: the relay took a retry job that a live worker had just
    taken off its queue (`queued`, in no list, for the moment before RQ marks it started) for
    stranded and enqueued a copy, a second retry chain that spent the delivery's attempts twice
    as fast: 2 of 500 emails failed for good during a two-minute SMTP outage."""
    import threading
    from rq.job import Job, JobStatus
    from app.queues.enqueue import SERIALIZER, deliver_job_id, queue
    from workers.relay import sweep
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, relay={"stale_after_seconds": 1}))
    user = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id, email) VALUES (%s, %s)", (user, f"{user.hex}@example.org"))
    assert app.test_client().post(TRIGGER, json=trigger_body([user]), headers=SERVICE).status_code == 202
    with app.app_context():
        from app.dispatch.drain import drain
        drain(app)
    redis = app.extensions["redis"]
    deliveries = queue("deliveries", app)
    delivery = scalar(db, "SELECT id FROM deliveries WHERE channel = 'email'")
    with db.cursor() as cur:
        cur.execute("UPDATE deliveries SET updated_at = now() - interval '1 minute'")
    assert redis.lpop(deliveries.key).decode() == deliver_job_id(delivery)   # the worker's BLPOP
    job = Job.fetch(deliver_job_id(delivery), connection=redis, serializer=SERIALIZER)
    starting = threading.Timer(0.3, job.set_status, (JobStatus.STARTED,))    # ...and, a moment later, its start
    starting.start()
    try:
        assert sweep(app) == (0, 0)
    finally:
        starting.join()
    assert deliveries.count == 0, "a copy of a job a live worker holds was enqueued"


# ---------------------------------------------------------------- PostgreSQL unreachable


def test_postgres_unreachable_is_503_and_never_202(make_app, redis_proc):
    app = make_app(DATABASE_URL="postgresql://postgres@127.0.0.1:1/x")
    client = app.test_client()
    for headers in (SERVICE, dict(SERVICE, **{"Idempotency-Key": "pg-down"})):
        r = client.post(TRIGGER, json=trigger_body([uuid.uuid4()]), headers=headers)
        assert r.status_code == 503, r.get_data(as_text=True)
        body = r.get_json()
        assert body["code"] == "notifications_m.service_unavailable" and body["status"] == 503
        assert "psycopg2" not in r.get_data(as_text=True) and "Traceback" not in r.get_data(as_text=True)
    assert queued(app, "dispatch") == 0     # nothing was enqueued for a trigger that was not stored


# ---------------------------------------------------------------- SIGKILL mid-dispatch


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_worker_registration_is_on_a_short_lease(clean, processes, tmp_path):
    """RQ would keep a worker's key for job timeout + 60 s after a crash; ours lives seconds."""
    import redis as redis_lib
    config = queue_yaml(tmp_path, relay={"interval_seconds": 1})
    client = redis_lib.Redis.from_url(clean["REDIS_URL"])
    worker = processes.start_worker(dict(clean, QUEUE_CONFIG=config), wait=False)
    try:
        key = f"rq:worker:notif-{worker.proc.pid}"
        ttl = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ttl = client.ttl(key)
            if 0 < ttl <= 5:
                break
            time.sleep(0.1)
        assert 0 < ttl <= 5, (ttl, worker.output()[-2000:])
    finally:
        worker.stop(timeout=15)
        client.close()
    assert worker.proc.returncode == 0, worker.output()[-3000:]   # a warm shutdown, not the SIGKILL after 15 s


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_sigkilled_mid_dispatch_is_recovered_without_duplicates(make_app, clean, processes, tmp_path):
    users_total = 5000
    config = queue_yaml(tmp_path, batch={"users_per_chunk": 100},
                              relay={"interval_seconds": 1, "stale_after_seconds": 2})
    app = make_app(QUEUE_CONFIG=config)
    client = app.test_client()
    users = [uuid.uuid4() for _ in range(users_total)]
    r = client.post(TRIGGER, json=trigger_body(users), headers=SERVICE)
    assert r.status_code == 202, r.get_data(as_text=True)
    trigger_id = r.get_json()["trigger_id"]

    env = dict(clean, QUEUE_CONFIG=config)
    watch = psycopg2.connect(clean["DATABASE_URL"])
    watch.autocommit = True

    def stored():
        return scalar(watch, "SELECT count(*) FROM notifications WHERE trigger_id = %s", trigger_id)

    first = processes.start_worker(env, wait=False)
    count = kill_when(first, stored)
    killed_at = stored()
    assert 0 < count <= killed_at < users_total, (count, killed_at, first.output()[-3000:])
    assert scalar(watch, "SELECT status FROM triggers WHERE id = %s", trigger_id) == "pending"

    second = processes.start_worker(env, wait=False)
    started = time.monotonic()
    deadline = started + 120
    status = None
    while time.monotonic() < deadline:
        status = scalar(watch, "SELECT status FROM triggers WHERE id = %s", trigger_id)
        if status == "dispatched":
            break
        assert second.alive, second.output()[-3000:]
        time.sleep(0.2)
    recovered_in = time.monotonic() - started
    assert status == "dispatched", f"not recovered in {recovered_in:.0f}s\n" + second.output()[-3000:]
    second.stop(timeout=15)

    try:
        assert stored() == users_total
        assert scalar(watch, "SELECT count(DISTINCT user_id) FROM notifications WHERE trigger_id = %s",
                      trigger_id) == users_total
        assert scalar(watch, "SELECT users_done FROM triggers WHERE id = %s", trigger_id) == users_total
        deliveries = scalar(watch, "SELECT count(*) FROM deliveries")
        assert deliveries == scalar(watch, "SELECT count(DISTINCT (notification_id, channel)) FROM deliveries")
        assert deliveries == users_total          # email for every notification (in-app: the notification)
    finally:
        watch.close()
    print(f"killed after {killed_at} of {users_total} stored; recovered in {recovered_in:.1f}s")
