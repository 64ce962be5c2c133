"""Scheduled triggers (issue 21): `send_at` on the durable outbox row, the status view, cancelling.

In-process here (the scheduler's pass is called as the worker's thread calls it, the jobs run in
this process); over HTTP with the real processes, Redis flushed while a trigger waits, at the end.
"""
import datetime
import uuid

import pytest

from testkit.api import PUSH_PATH, IN_APP, assert_envelope, post_trigger, trigger, trigger_body
from testkit.identity import OTHER_API_KEY, SERVICE, bearer
from testkit.jobs import queued, run_jobs
from testkit.processes import wait_until
from testkit.rows import scalar


def later(seconds):
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)).isoformat()


def status(client, trigger_id, headers=SERVICE):
    response = client.get(f"/v1/notifications/triggers/{trigger_id}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def cancel(client, trigger_id, headers=SERVICE):
    return client.delete(f"/v1/notifications/triggers/{trigger_id}", headers=headers)


def time_passes(db, trigger_id):
    """Its send_at has come (moved back rather than waited for)."""
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET send_at = now() - interval '1 second' WHERE id = %s", (trigger_id,))


def scheduler_pass(app):
    from app.dispatch import schedule
    return schedule.tick(app)


def inbox(client, user_id):
    response = client.get("/v1/notifications", headers=bearer(user_id))
    assert response.status_code == 200
    return response.get_json()["items"]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("fields, field", [
    ({"send_at": "2030-01-01T09:00:00"}, "send_at"),                       # no offset: not RFC 3339
    ({"send_at": "tomorrow at nine"}, "send_at"),
    ({"send_at": later(367 * 86400)}, "send_at"),                          # more than a year ahead
    ({"expires_at": later(-60)}, "expires_at"),                            # already over
    ({"send_at": later(3600), "expires_at": later(1800)}, "expires_at"),   # before its send_at
])
def test_bad_times_are_a_422_naming_the_field(client, fields, field):
    response = post_trigger(client, **IN_APP, **fields)
    assert_envelope(response, 422, "invalid_request")
    assert field in response.get_json()["errors"]


def test_the_direct_push_takes_no_send_at(client):
    response = client.post(PUSH_PATH, json=trigger_body(**IN_APP, send_at=later(60)), headers=SERVICE)
    assert_envelope(response, 422, "invalid_request")
    assert "send_at" in response.get_json()["errors"]


def test_a_send_at_in_another_offset_is_kept_as_utc(client, db):
    zone = datetime.timezone(datetime.timedelta(hours=2))
    at = (datetime.datetime.now(zone) + datetime.timedelta(hours=1)).replace(microsecond=0)
    accepted = trigger(client, **IN_APP, send_at=at.isoformat())
    assert scalar(db, "SELECT send_at FROM triggers WHERE id = %s", accepted["trigger_id"]) == at
    shown = status(client, accepted["trigger_id"])["send_at"]
    assert shown == at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ---------------------------------------------------------------- scheduled, then due


def test_scheduled_trigger_waits_for_its_time_then_is_stored(app, client, db):
    user_id = uuid.uuid4()
    accepted = trigger(client, [user_id], **IN_APP, send_at=later(3600))
    assert accepted["send_at"].endswith("Z")
    view = status(client, accepted["trigger_id"])
    assert (view["status"], view["users_done"], view["dispatched_at"]) == ("scheduled", 0, None)
    assert queued(app, "dispatch") == 0          # nothing in Redis stands for it
    run_jobs(app)
    scheduler_pass(app)
    run_jobs(app)
    assert inbox(client, user_id) == []
    time_passes(db, accepted["trigger_id"])
    scheduler_pass(app)                          # made due and a drain woken
    assert status(client, accepted["trigger_id"])["status"] == "pending"
    assert queued(app, "dispatch") == 1
    run_jobs(app)
    assert [n["title"] for n in inbox(client, user_id)] == ["Hello"]
    assert status(client, accepted["trigger_id"])["status"] == "dispatched"


def test_a_scheduled_urgent_trigger_wakes_the_urgent_lanes_drain(app, client, db):
    """A lane's drain takes only its lane's triggers (app/queues/lanes.py): the scheduler wakes the
    lane of each trigger it makes due, not the normal lane's."""
    from app.queues.enqueue import queue
    user_id = uuid.uuid4()
    accepted = trigger(client, [user_id], type="security", event="login_alert", title="Sign-in", channels=["system"],
                       send_at=later(3600))
    time_passes(db, accepted["trigger_id"])
    scheduler_pass(app)
    assert (queue("dispatch", app, lane="urgent").count, queued(app, "dispatch")) == (1, 0)
    run_jobs(app)
    assert [n["title"] for n in inbox(client, user_id)] == ["Sign-in"]


def test_redis_flushed_while_scheduled_loses_nothing(app, client, db):
    user_id = uuid.uuid4()
    accepted = trigger(client, [user_id], **IN_APP, send_at=later(3600))
    app.extensions["redis"].flushall()
    time_passes(db, accepted["trigger_id"])
    scheduler_pass(app)
    run_jobs(app)
    assert len(inbox(client, user_id)) == 1


def test_a_send_at_already_past_is_dispatched_at_once(app, client):
    user_id = uuid.uuid4()
    accepted = trigger(client, [user_id], **IN_APP, send_at=later(-5))
    assert "send_at" not in accepted
    assert status(client, accepted["trigger_id"])["status"] == "pending"
    run_jobs(app)
    assert len(inbox(client, user_id)) == 1


def test_the_scheduler_sleeps_until_the_next_send_at_at_most_a_tick(app, client):
    from app.dispatch.schedule import TICK
    assert scheduler_pass(app) == TICK           # nothing scheduled
    trigger(client, **IN_APP, send_at=later(0.2))
    assert 0 <= scheduler_pass(app) <= 0.2


# ---------------------------------------------------------------- cancelling


def test_a_cancelled_trigger_is_never_stored(app, client, db):
    user_id = uuid.uuid4()
    accepted = trigger(client, [user_id], **IN_APP, send_at=later(3600))
    assert cancel(client, accepted["trigger_id"]).status_code == 204
    assert cancel(client, accepted["trigger_id"]).status_code == 204     # a repeat changes nothing
    view = status(client, accepted["trigger_id"])
    assert view["status"] == "cancelled" and view["cancelled_at"].endswith("Z")
    time_passes(db, accepted["trigger_id"])
    scheduler_pass(app)
    run_jobs(app)
    assert inbox(client, user_id) == []
    assert scalar(db, "SELECT count(*) FROM notifications") == 0
    assert scalar(db, "SELECT count(*) FROM audit_log WHERE action = 'notification.trigger_cancel'") == 1


def test_cancelling_once_due_or_dispatched_is_a_409(app, client, db):
    accepted = trigger(client, **IN_APP, send_at=later(3600))
    time_passes(db, accepted["trigger_id"])
    scheduler_pass(app)
    response = cancel(client, accepted["trigger_id"])          # due: the drain may be storing it now
    assert_envelope(response, 409, "trigger_not_cancellable")
    run_jobs(app)
    assert_envelope(cancel(client, accepted["trigger_id"]), 409, "trigger_not_cancellable")
    assert status(client, accepted["trigger_id"])["status"] == "dispatched"


def test_an_unscheduled_trigger_cannot_be_cancelled(client):
    accepted = trigger(client, **IN_APP)
    assert_envelope(cancel(client, accepted["trigger_id"]), 409, "trigger_not_cancellable")


def test_cancel_answers_another_service_and_bad_ids_as_the_status_view_does(client):
    accepted = trigger(client, **IN_APP, send_at=later(3600))
    assert_envelope(cancel(client, accepted["trigger_id"], headers={"X-API-Key": OTHER_API_KEY}), 404, "not_found")
    assert_envelope(cancel(client, str(uuid.uuid4())), 404, "not_found")
    assert_envelope(cancel(client, "not-a-uuid"), 400, "invalid_id")
    assert status(client, accepted["trigger_id"])["status"] == "scheduled"


# ---------------------------------------------------------------- the real processes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_over_http_a_scheduled_trigger_appears_at_its_time_and_a_cancelled_one_never(processes, base_env,
                                                                                     tmp_path, clean, rds):
    from testkit.config_files import queue_config
    processes.start_worker(base_env, queue_config=queue_config(tmp_path))
    web = processes.start_web(base_env, workers=1, keepalive=1)
    user_id = uuid.uuid4()
    stream = web.stream(headers=bearer(user_id))
    try:
        send_at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=6)
        body = trigger_body([user_id], **IN_APP, title="At nine", send_at=send_at.isoformat())
        kept = web.post("/v1/notifications/trigger", json=body, headers=SERVICE).json()
        body = dict(body, title="Withdrawn")
        withdrawn = web.post("/v1/notifications/trigger", json=body, headers=SERVICE).json()
        assert web.delete(f"/v1/notifications/triggers/{withdrawn['trigger_id']}", headers=SERVICE).status_code == 204
        assert web.get(kept["status_url"], headers=SERVICE).json()["status"] == "scheduled"
        rds.flushall()                                     # Redis forgets everything while it waits
        assert web.get("/v1/notifications", headers=bearer(user_id)).json()["items"] == []
        stream.wait_for(lambda st: any(e.event is None for e in st.all_events), 20, "the scheduled notification")
        shown = [e.json() for e in stream.snapshot(everything=True) if e.event is None]
        assert [n["title"] for n in shown] == ["At nine"]
        assert datetime.datetime.fromisoformat(shown[0]["created_at"].replace("Z", "+00:00")) >= \
            send_at.replace(microsecond=send_at.microsecond // 1000 * 1000)   # not before its time
        wait_until(lambda: web.get(kept["status_url"], headers=SERVICE).json()["status"] == "dispatched", 10)
        items = web.get("/v1/notifications", headers=bearer(user_id)).json()["items"]
        assert [n["title"] for n in items] == ["At nine"]
        assert web.get(withdrawn["status_url"], headers=SERVICE).json()["status"] == "cancelled"
    finally:
        stream.close()
