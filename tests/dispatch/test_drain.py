"""The drain (app/dispatch/drain.py): pending triggers woken by one flag, stored in batches, exactly
once, whatever runs at the same time, fails or dies midway.

Real PostgreSQL, Redis and RQ; the kill test runs `python -m workers` and SIGKILLs it.
"""
import time
import uuid

import psycopg2
import pytest

from testkit.api import TRIGGER_PATH as TRIGGER, trigger_body
from testkit.concurrency import run_together
from testkit.config_files import queue_yaml
from testkit.identity import SERVICE
from testkit.jobs import queued, run_jobs
from testkit.processes import kill_when
from testkit.rows import scalar


def accept(client, count, users_each=1, **overrides):
    """POST `count` triggers; returns their ids in order."""
    ids = []
    for _ in range(count):
        r = client.post(TRIGGER, json=trigger_body([uuid.uuid4() for _ in range(users_each)], **overrides),
                        headers=SERVICE)
        assert r.status_code == 202, r.get_data(as_text=True)
        ids.append(r.get_json()["trigger_id"])
    return ids


def assert_each_stored_once(db, users_total):
    assert scalar(db, "SELECT count(*) FROM notifications") == users_total
    assert scalar(db, "SELECT count(DISTINCT (trigger_id, user_id)) FROM notifications") == users_total
    assert scalar(db, "SELECT count(*) FROM triggers WHERE status <> 'dispatched'") == 0
    assert scalar(db, "SELECT count(*) FROM triggers WHERE users_done <> users_total") == 0
    deliveries = scalar(db, "SELECT count(*) FROM deliveries")
    assert deliveries == scalar(db, "SELECT count(DISTINCT (notification_id, channel)) FROM deliveries")
    assert deliveries == users_total                # message_received: email (in-app: the notification)


def test_many_triggers_wake_one_drain_job_and_are_stored_in_acceptance_order(app, client, db):
    ids = accept(client, 40)
    assert queued(app, "dispatch") == 1              # one job for all of them, not one each
    run_jobs(app)
    assert_each_stored_once(db, 40)
    with db.cursor() as cur:
        cur.execute("SELECT n.trigger_id::text FROM notifications n ORDER BY n.seq")
        assert [row[0] for row in cur.fetchall()] == ids
    assert client.get(f"/v1/notifications/triggers/{ids[-1]}", headers=SERVICE).get_json()["status"] == "dispatched"


def test_a_trigger_accepted_once_the_drain_has_started_wakes_the_next_job(app, client, db):
    from app.queues.waker import clear_wake
    accept(client, 1)
    with app.app_context():
        clear_wake(app)                              # what a drain job does first
    accept(client, 1)
    accept(client, 1)                                # the flag is up again: no third job
    assert queued(app, "dispatch") == 2
    run_jobs(app)
    assert_each_stored_once(db, 3)


def test_concurrent_drains_never_store_a_trigger_twice(make_app, db, tmp_path):
    from app.dispatch.drain import drain
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 20}))
    client = app.test_client()
    small = accept(client, 300)
    medium = accept(client, 10, users_each=7)
    big = accept(client, 4, users_each=45)           # chunked: more users than one chunk

    def run(_):
        with app.app_context():
            return drain(app)
    done = run_together(run, 4, timeout=120)
    # every trigger was taken by exactly one drain (a batch or a big trigger counts its triggers)
    assert sum(done) == len(small) + len(medium) + len(big)
    assert_each_stored_once(db, 300 + 70 + 180)


def test_a_failing_trigger_is_deferred_and_does_not_hold_up_the_others(app, client, db):
    ids = accept(client, 5)
    with db.cursor() as cur:   # as if notifications.yaml no longer had its event
        cur.execute("UPDATE triggers SET body = jsonb_set(body, '{event}', '\"gone\"') WHERE id = %s", (ids[2],))
    before = scalar(db, "SELECT now()")
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications") == 4
    with db.cursor() as cur:   # deferred by the first back-off step (1 s) from its failure, itself after `before`
        cur.execute("SELECT status, dispatch_attempts, dispatch_after >= %s + interval '1 second', last_error"
                    " FROM triggers WHERE id = %s", (before, ids[2]))
        status, attempts, later, error = cur.fetchone()
    assert (status, attempts, later) == ("pending", 1, True)
    assert "InvalidEvent" in error and "gone" in error
    with db.cursor() as cur:   # a back-off that has not run out (pushed an hour on, so no clock can race it)
        cur.execute("UPDATE triggers SET dispatch_after = dispatch_after + interval '1 hour' WHERE id = %s", (ids[2],))
    run_jobs(app)                                    # not due yet: left alone
    assert scalar(db, "SELECT dispatch_attempts FROM triggers WHERE id = %s", ids[2]) == 1
    with db.cursor() as cur:   # the configuration is fixed and its time has come
        cur.execute("UPDATE triggers SET body = jsonb_set(body, '{event}', '\"message_received\"'),"
                    " dispatch_after = now() WHERE id = %s", (ids[2],))
    with app.app_context():
        from app.queues.waker import wake_dispatcher
        wake_dispatcher(force=True)
    run_jobs(app)
    assert_each_stored_once(db, 5)


def test_a_failing_big_trigger_is_deferred_too(make_app, db, tmp_path):
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 2}))
    client = app.test_client()
    bad, good = accept(client, 2, users_each=5)
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET body = jsonb_set(body, '{type}', '\"fax\"') WHERE id = %s", (bad,))
    run_jobs(app)
    assert scalar(db, "SELECT status FROM triggers WHERE id = %s", good) == "dispatched"
    assert scalar(db, "SELECT count(*) FROM notifications WHERE trigger_id = %s", good) == 5
    assert scalar(db, "SELECT (status, dispatch_attempts) FROM triggers WHERE id = %s", bad) == "(pending,1)"


def test_a_stopping_worker_hands_the_rest_over(make_app, db, tmp_path):
    from app.dispatch.drain import drain
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 10}))
    client = app.test_client()
    accept(client, 35)
    app.extensions["redis"].flushall()               # no job queued
    with app.app_context():
        assert drain(app, should_stop=lambda: True) == 10    # one batch, then it stops
    assert scalar(db, "SELECT count(*) FROM notifications") == 10
    assert queued(app, "dispatch") == 1              # and woke the next job for the rest
    run_jobs(app)
    assert_each_stored_once(db, 35)


def test_a_big_trigger_resumed_redoes_its_last_chunk_and_stores_each_user_once(make_app, db, tmp_path):
    """A big trigger's run that stopped (or died) after a chunk committed is run again from that
    chunk, whose publishes may not have gone out: its users are not stored a second time (no unique
    index says so on a partitioned table: app/dispatch/repository.py `store_chunk`), and its rows
    come back to be published again."""
    from app import db as app_db
    from app.dispatch import repository
    from app.dispatch.fanout import dispatch_big
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 10}))
    [trigger_id] = accept(app.test_client(), 1, users_each=25)
    app.extensions["redis"].flushall()               # no job: this test runs the dispatch itself
    stored = []
    real = repository.store_chunk

    def recording(*args, **kwargs):
        rows = real(*args, **kwargs)
        stored.append(len(rows))
        return rows
    with app.app_context(), app_db.connection() as conn:
        assert dispatch_big(app, conn, trigger_id, should_stop=lambda: True) == 10
        repository.store_chunk = recording
        try:
            assert dispatch_big(app, conn, trigger_id) == 25
        finally:
            repository.store_chunk = real
    assert stored == [10, 10, 5]                     # the first chunk's rows came back for its publishes
    assert_each_stored_once(db, 25)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_worker_sigkilled_mid_batch_stores_every_trigger_once(make_app, clean, processes, tmp_path):
    """Batches are all or nothing: a kill rolls the batch in hand back (its claims die with the
    connection), the relay wakes a drain on the next worker, and nothing is stored twice."""
    chunk, total = 50, 1500
    config = queue_yaml(tmp_path, batch={"users_per_chunk": chunk},
                              relay={"interval_seconds": 1, "stale_after_seconds": 2})
    app = make_app(QUEUE_CONFIG=config)
    accept(app.test_client(), total)
    env = dict(clean, QUEUE_CONFIG=config)
    watch = psycopg2.connect(clean["DATABASE_URL"])
    watch.autocommit = True
    try:
        first = processes.start_worker(env, wait=False)
        kill_when(first, lambda: scalar(watch, "SELECT count(*) FROM notifications"))
        killed_at = scalar(watch, "SELECT count(*) FROM notifications")
        assert 0 < killed_at < total, (killed_at, first.output()[-3000:])
        assert killed_at % chunk == 0                # whole batches only
        assert scalar(watch, "SELECT count(*) FROM triggers WHERE status = 'dispatched'") == killed_at
        second = processes.start_worker(env, wait=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if scalar(watch, "SELECT count(*) FROM triggers WHERE status = 'pending'") == 0:
                break
            assert second.alive, second.output()[-3000:]
            time.sleep(0.2)
        second.stop(timeout=15)
        assert_each_stored_once(watch, total)
    finally:
        watch.close()
    print(f"killed after {killed_at} of {total} stored")


def test_redis_down_during_a_drain_stores_and_defers_nothing(app, client, db, redis_proc):
    """Publishing is best effort once a batch has committed (the streams' hubs lost Redis too and
    catch up from PostgreSQL); nothing is held against the triggers."""
    from app.dispatch.drain import drain
    accept(client, 12)
    redis_proc.stop()
    try:
        with app.app_context():
            assert drain(app) == 12
    finally:
        redis_proc.start()
    assert_each_stored_once(db, 12)
    assert scalar(db, "SELECT count(*) FROM triggers WHERE dispatch_attempts > 0") == 0
