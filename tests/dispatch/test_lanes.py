"""Priority lanes (app/queues/lanes.py): an urgent trigger's email is sent before a bulk trigger's
queued emails, a bulk fan-out hands over between chunks when urgent work waits, a trigger may lower
its event's priority but never raise it, and /metrics shows each lane's queue depth. Real
PostgreSQL, Redis, RQ (burst worker, the real worker class and queue order) and SMTP (aiosmtpd)."""
import uuid

import pytest

from testkit.api import assert_error, post_trigger, put_contact, trigger
from testkit.config_files import queue_yaml
from testkit.jobs import queued, run_jobs
from testkit.rows import scalar


@pytest.fixture
def build(channel_app, smtp):
    def make(**settings):
        events = {"chat": {"message_received": ["system", "email"]}}
        return channel_app({"email": {"enabled": True}}, events, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port),
                           MAIL_TIMEOUT="5", **settings)
    return make


def with_email(client, count, prefix):
    users = [uuid.uuid4() for _ in range(count)]
    for user_id in users:
        put_contact(client, user_id, email=f"{prefix}-{user_id.hex[:8]}@example.org")
    return users


def test_an_urgent_email_goes_out_before_a_bulk_triggers_queued_emails(build, smtp):
    app = build()
    client = app.test_client()
    bulk = with_email(client, 30, "bulk")
    trigger(client, bulk, priority="bulk", title="Monthly statement")
    run_jobs(app, purposes=("dispatch",))          # stored: its 30 email jobs wait
    assert queued(app, "deliveries") == 0          # not on the normal lane's queue: on the bulk lane's
    (urgent,) = with_email(client, 1, "urgent")
    trigger(client, [urgent], type="security", event="login_alert", title="New sign-in")
    run_jobs(app)

    received = [m["rcpt_tos"][0] for m in smtp.messages]
    assert len(received) == 31
    assert received[0].startswith("urgent-")      # triggered last, sent first


def test_a_lane_may_store_in_chunks_of_its_own_size(make_app, db, tmp_path):
    """`batch.users_per_chunk_<lane>`: every store holds the one sequence lock from its INSERT to its
    publish, so a bulk fan-out's chunk is as long as an urgent trigger can wait behind it; the bulk
    lane's chunks may be smaller than the others'."""
    from app import db as app_db
    from app.dispatch.fanout import dispatch_big
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 10, "users_per_chunk_bulk": 4}))
    assert app.config["DOMAIN"].chunk_size("bulk") == 4 and app.config["DOMAIN"].chunk_size("urgent") == 10
    client = app.test_client()
    bulk_id = trigger(client, [uuid.uuid4() for _ in range(25)], priority="bulk")["trigger_id"]
    normal_id = trigger(client, [uuid.uuid4() for _ in range(25)])["trigger_id"]
    app.extensions["redis"].flushall()               # no job: the test runs the fan-outs itself
    with app.app_context(), app_db.connection() as conn:
        assert dispatch_big(app, conn, bulk_id, should_stop=lambda: True) == 4     # one chunk, then stops
        assert dispatch_big(app, conn, normal_id, should_stop=lambda: True) == 10
    from app.dispatch.drain import drain
    with app.app_context():
        drain(app)                                   # the rest of both, each from where it stopped
    assert scalar(db, "SELECT count(*) FROM notifications") == 50
    assert scalar(db, "SELECT count(DISTINCT (trigger_id, user_id)) FROM notifications") == 50


def test_a_lanes_chunk_size_must_be_positive(make_app, tmp_path):
    from app.errors import ConfigError
    with pytest.raises(ConfigError, match="users_per_chunk_bulk"):
        make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 10, "users_per_chunk_bulk": 0}))


def test_a_bulk_fan_out_hands_over_between_chunks_when_urgent_work_waits(build, db):
    app = build()                                   # channel_config: 100 users a chunk
    client = app.test_client()
    bulk_id = trigger(client, [uuid.uuid4() for _ in range(350)], priority="bulk")["trigger_id"]
    trigger(client, [uuid.uuid4()], type="security", event="login_alert")   # its drain waits, urgent lane
    from app.dispatch.drain import drain
    with app.app_context():
        drain(app, lane="bulk")
    assert scalar(db, "SELECT users_done FROM triggers WHERE id = %s", bulk_id) == 100   # one chunk, then yields
    assert scalar(db, "SELECT count(*) FROM notifications WHERE trigger_id <> %s", bulk_id) == 0

    run_jobs(app, purposes=("dispatch",))            # the urgent drain first, then the bulk one it handed to
    first = scalar(db, "SELECT trigger_id FROM notifications ORDER BY seq OFFSET 100 LIMIT 1")
    assert str(first) != bulk_id                      # the urgent notification right after the first chunk
    assert scalar(db, "SELECT count(*) FROM triggers WHERE status = 'dispatched'") == 2
    assert scalar(db, "SELECT count(*) FROM notifications") == 351


def test_a_trigger_may_lower_its_events_priority_but_never_raise_it(build, db):
    app = build()
    client = app.test_client()
    r = post_trigger(client, [uuid.uuid4()], priority="urgent")     # chat.message_received is normal
    assert_error(r, 400, "invalid_priority")
    assert "normal" in r.get_json()["message"]
    assert scalar(db, "SELECT count(*) FROM triggers") == 0
    lowered = trigger(client, [uuid.uuid4()], type="security", event="login_alert", priority="bulk")
    assert scalar(db, "SELECT body->>'priority' FROM triggers WHERE id = %s", lowered["trigger_id"]) == "bulk"
    plain = trigger(client, [uuid.uuid4()], type="security", event="login_alert")
    assert scalar(db, "SELECT body->>'priority' FROM triggers WHERE id = %s", plain["trigger_id"]) == "urgent"


def test_metrics_show_each_lanes_queue_depth(build):
    app = build()
    client = app.test_client()
    trigger(client, with_email(client, 3, "bulk"), priority="bulk")
    run_jobs(app, purposes=("dispatch",))
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'notif_lane_queue_depth{lane="bulk",purpose="deliveries"} 3.0' in metrics
    assert 'notif_lane_queue_depth{lane="urgent",purpose="deliveries"} 0.0' in metrics
    assert 'notif_queue_depth{queue="test-deliveries-bulk"} 3.0' in metrics


def test_an_urgent_worker_takes_only_the_urgent_lane(build):
    from workers.trust import worker_queues
    app = build(WORKER_LANES="urgent")
    assert [q.name.rpartition(":")[2] for q in worker_queues(app)] == ["test-dispatch-urgent", "test-deliveries-urgent"]
    every = [q.name.rpartition(":")[2] for q in worker_queues(build())]
    assert every[:2] == ["test-dispatch-urgent", "test-deliveries-urgent"]
    assert every[4:6] == ["test-dispatch", "test-deliveries"] and len(every) == 8


@pytest.mark.parametrize("value", ["fast", "urgent,urgent"])
def test_unknown_worker_lanes_stop_start_up(build, value):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        build(WORKER_LANES=value)
    assert caught.value.key == "WORKER_LANES"


def test_a_lane_may_have_a_recipients_budget_of_its_own(make_app, tmp_path, db):
    app = make_app(RATE_LIMITS_ENABLED="true",
                   QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"recipients_bulk": "10000/minute"}))
    client = app.test_client()
    users = lambda: [uuid.uuid4() for _ in range(6000)]   # noqa: E731
    trigger(client, users(), priority="bulk")
    r = post_trigger(client, users(), priority="bulk")
    assert_error(r, 429, "rate_limited")
    assert "recipients_bulk" in r.get_json()["message"] and "Retry-After" in r.headers
    trigger(client, users())                          # the normal lane has only the overall budget
    assert scalar(db, "SELECT count(*) FROM triggers") == 2


def test_a_lane_budget_smaller_than_the_largest_trigger_stops_start_up(make_app, tmp_path):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        make_app(QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"recipients_bulk": "100/minute"}))
    assert caught.value.key == "rate_limits.recipients_bulk"


def test_a_direct_push_checks_the_priority_too(build):
    from testkit.api import push
    client = build().test_client()
    assert_error(push(client, [uuid.uuid4()], priority="urgent"), 400, "invalid_priority")
    assert push(client, [uuid.uuid4()], priority="bulk").status_code == 200


def test_the_relay_wakes_a_lost_urgent_drain_on_the_urgent_lane(make_app, rds, db, tmp_path):
    """Redis lost the urgent trigger's drain job: the relay wakes one on the urgent lane's queue, not
    behind the normal lane's work."""
    from workers.relay import sweep
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, relay={"interval_seconds": 1, "stale_after_seconds": 1}))
    client = app.test_client()
    trigger(client, [uuid.uuid4()], type="security", event="login_alert")
    rds.flushdb()                                          # the job and its wake flag gone
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET created_at = created_at - interval '2 minutes'")
    assert sweep(app) == (1, 0)
    from app.queues.enqueue import queue
    assert queue("dispatch", app, lane="urgent").count == 1 and queue("dispatch", app).count == 0
    run_jobs(app)
    assert scalar(db, "SELECT status FROM triggers") == "dispatched"


def test_a_lane_may_have_a_request_budget_of_its_own(make_app, tmp_path, db):
    """`trigger_<lane>`: one caller's bulk sends cannot use up the requests its alerts need."""
    app = make_app(RATE_LIMITS_ENABLED="true", QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"trigger_bulk": "2/minute"}))
    client = app.test_client()
    for _ in range(2):
        trigger(client, [uuid.uuid4()], priority="bulk")
    r = post_trigger(client, [uuid.uuid4()], priority="bulk")
    assert_error(r, 429, "rate_limited")
    assert "trigger_bulk" in r.get_json()["message"] and "Retry-After" in r.headers
    trigger(client, [uuid.uuid4()])                   # the normal lane: only the overall `trigger` budget
    trigger(client, [uuid.uuid4()], type="security", event="login_alert")
    assert scalar(db, "SELECT count(*) FROM triggers") == 4


def test_an_unknown_lane_budget_stops_start_up(make_app, tmp_path):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        make_app(QUEUE_CONFIG=queue_yaml(tmp_path, rate_limits={"trigger_fast": "2/minute"}))
    assert caught.value.key == "rate_limits.trigger_fast"


def lane_jobs(app, lane):
    """(queued, scheduled) delivery job ids on `lane`'s deliveries queue."""
    from rq.registry import ScheduledJobRegistry
    from app.queues.enqueue import queue
    q = queue("deliveries", app, lane=lane)
    return set(q.get_job_ids()), set(ScheduledJobRegistry(queue=q).get_job_ids())


def test_a_delivery_held_by_quiet_hours_waits_on_its_lanes_queue(build, smtp, user):
    import datetime
    from testkit.jobs import fast_forward
    app = build()
    client = app.test_client()
    user_id, headers = user
    put_contact(client, user_id, email="night@example.org", timezone="UTC")
    now = datetime.datetime.now(datetime.timezone.utc)
    window = {"start": (now - datetime.timedelta(hours=1)).strftime("%H:%M"),
              "end": (now + datetime.timedelta(hours=1)).strftime("%H:%M"), "channels": ["email"]}
    assert client.put("/v1/notifications/preferences", headers=headers, json={"quiet_hours": window}).status_code == 200
    trigger(client, [user_id], priority="bulk", title="Statement ready")
    run_jobs(app)
    assert smtp.messages == []
    assert lane_jobs(app, "bulk")[1] and not lane_jobs(app, "normal")[1]   # held on the bulk lane, not normal
    client.put("/v1/notifications/preferences", headers=headers, json={"quiet_hours": None})
    assert fast_forward(app) == 1
    run_jobs(app)
    assert [m["rcpt_tos"] for m in smtp.messages] == [["night@example.org"]]


def test_flask_deliveries_retry_sends_each_delivery_on_its_triggers_lane(build, smtp, db):
    app = build()
    client = app.test_client()
    (user_id,) = with_email(client, 1, "retry")
    trigger(client, [user_id], priority="bulk", title="Statement ready")
    run_jobs(app, purposes=("dispatch",))
    from app.queues.enqueue import queue
    queue("deliveries", app, lane="bulk").empty()        # its job lost; its attempts spent
    with db.cursor() as cur:
        cur.execute("UPDATE deliveries SET status = 'failed', attempts = 5 WHERE channel = 'email'")
    result = app.test_cli_runner().invoke(args=["deliveries", "retry"])
    assert result.exit_code == 0, result.output
    assert lane_jobs(app, "bulk")[0] and not lane_jobs(app, "normal")[0]
    run_jobs(app)
    assert len(smtp.messages) == 1
