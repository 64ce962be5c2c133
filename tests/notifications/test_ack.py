"""Notices that need an acknowledgement (issue 21): the shape, POST /{id}/ack, ?ack=pending,
ack_pending, `event: ack`, the service's per-user view, and escalation steps with their rules.

The shipped `security.terms_updated` asks for an acknowledgement within PT24H and escalates to
email after PT1H and SMS after PT12H. Time passes by moving `due_at` / `ack_deadline` back; the
steps run as the worker's scheduler thread runs them (`schedule.tick`), the jobs in this process.
"""
import datetime
import json
import time
import uuid

import pytest

from testkit.api import assert_envelope, post_trigger, put_contact, trigger
from testkit.identity import SERVICE, bearer
from testkit.jobs import run_jobs
from testkit.processes import wait_until
from testkit.rows import scalar

TERMS = {"type": "security", "event": "terms_updated", "title": "Our terms changed"}
ONE_STEP = {"required": True, "deadline": "PT24H", "escalate": [{"after": "PT1H", "channels": ["email"]}]}


@pytest.fixture
def mail_app(make_app, smtp):
    return make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")


def notice(app, client, user_id, **fields):
    """Trigger a notice to the user, store it; its public shape as the user reads it."""
    trigger(client, [user_id], **dict(TERMS, **fields))
    run_jobs(app)
    items = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"]
    return items[0]


def ack(client, user_id, nid, **headers):
    return client.post(f"/v1/notifications/{nid}/ack", headers=dict(bearer(user_id), **headers))


def counts(client, user_id):
    return client.get("/v1/notifications/unread-count", headers=bearer(user_id)).get_json()


def steps_pass(app, db):
    """Every pending step is due now; the scheduler's pass runs them, then the delivery jobs."""
    from app.dispatch import schedule
    with db.cursor() as cur:
        cur.execute("UPDATE escalations SET due_at = now() - interval '1 second' WHERE status = 'pending'")
    schedule.tick(app)
    run_jobs(app)


# ---------------------------------------------------------------- shape and the endpoint


def test_a_notice_carries_its_ack_fields_and_a_plain_one_does_not(app, client, db):
    user_id = uuid.uuid4()
    shown = notice(app, client, user_id)
    assert shown["ack_required"] is True and shown["acked_at"] is None
    created = datetime.datetime.fromisoformat(shown["created_at"].replace("Z", "+00:00"))
    deadline = datetime.datetime.fromisoformat(shown["ack_deadline"].replace("Z", "+00:00"))
    assert abs((deadline - created).total_seconds() - 86400) < 1
    assert scalar(db, "SELECT count(*) FROM escalations WHERE status = 'pending'") == 2   # email, then SMS
    plain = notice(app, client, user_id, event="password_changed")
    assert (plain["ack_required"], plain["ack_deadline"], plain["acked_at"]) == (False, None, None)


def test_ack_records_once_marks_read_and_is_idempotent(app, client, db):
    user_id = uuid.uuid4()
    nid = notice(app, client, user_id)["id"]
    assert counts(client, user_id)["ack_pending"] == 1
    pending = client.get("/v1/notifications", headers=bearer(user_id), query_string={"ack": "pending"}).get_json()
    assert [n["id"] for n in pending["items"]] == [nid]
    first = ack(client, user_id, nid, **{"User-Agent": "BankApp/7.1"})
    assert first.status_code == 200
    body = first.get_json()
    assert body["id"] == nid and body["acked_at"] is not None and body["read"] is True
    again = ack(client, user_id, nid)
    assert again.status_code == 200 and again.get_json()["acked_at"] == body["acked_at"]
    assert counts(client, user_id)["ack_pending"] == 0
    assert client.get("/v1/notifications", headers=bearer(user_id),
                      query_string={"ack": "pending"}).get_json()["items"] == []
    audited = scalar(db, "SELECT array_agg(change::text) FROM audit_log WHERE action = 'notification.ack'")
    assert len(audited) == 1 and json.loads(audited[0])["user_agent"] == "BankApp/7.1"
    assert scalar(db, "SELECT client_ip FROM audit_log WHERE action = 'notification.ack'") not in (None, "127.0.0.1")
    assert scalar(db, "SELECT array_agg(DISTINCT status) FROM escalations") == ["cancelled"]


def test_reading_does_not_acknowledge(app, client):
    user_id = uuid.uuid4()
    nid = notice(app, client, user_id)["id"]
    assert client.post("/v1/notifications/read-all", headers=bearer(user_id), json={}).status_code == 200
    shown = client.get(f"/v1/notifications/{nid}", headers=bearer(user_id)).get_json()
    assert shown["read"] is True and shown["acked_at"] is None
    assert counts(client, user_id)["ack_pending"] == 1


def test_ack_of_a_plain_notification_is_a_409_and_of_anothers_a_404(app, client):
    user_id = uuid.uuid4()
    plain = notice(app, client, user_id, event="password_changed")["id"]
    assert_envelope(ack(client, user_id, plain), 409, "ack_not_required")
    assert_envelope(ack(client, uuid.uuid4(), plain), 404, "not_found")
    assert_envelope(ack(client, user_id, "nope"), 400, "invalid_id")


def test_every_stream_of_the_user_hears_ack(app, client):
    from app.bus.codec import decode, message_key, user_channel
    user_id = uuid.uuid4()
    nid = notice(app, client, user_id)["id"]
    pubsub = app.extensions["redis"].pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(user_channel(app.config["REDIS_PREFIX"], user_id))
    try:
        pubsub.get_message(timeout=1)
        assert ack(client, user_id, nid).status_code == 200
        named, deadline = [], time.monotonic() + 2
        while time.monotonic() < deadline and len(named) < 2:
            if (message := pubsub.get_message(timeout=0.2)) is not None:
                got = decode(message_key(app.config["SECRET_KEY"]), message["channel"], message["data"])
                named.append((got.name, json.loads(got.body)))
    finally:
        pubsub.close()
    assert named[0][0] == "ack" and named[0][1]["ids"] == [nid] and named[0][1]["acked_at"]
    assert named[1][0] == "unread" and named[1][1]["ack_pending"] == 0


@pytest.mark.parametrize("ack_field, where", [
    ({"required": True, "deadline": "24 hours"}, "ack.deadline"),
    ({"required": True, "deadline": "P1M"}, "ack.deadline"),                        # months have no length
    ({"required": True, "escalate": [{"after": "PT1H", "channels": ["pigeon"]}]}, "ack.escalate[0].channels"),
    ({"required": False, "escalate": [{"after": "PT1H", "channels": ["email"]}]}, "ack.escalate"),
    ({"required": "yes"}, "ack.required"),
    ({"required": True, "grace": "PT1H"}, "ack.grace"),
])
def test_a_bad_ack_is_a_422_naming_the_key(client, ack_field, where):
    response = post_trigger(client, **TERMS, ack=ack_field)
    assert_envelope(response, 422, "invalid_request")
    assert where in response.get_json()["errors"], response.get_json()


def test_the_trigger_overrides_the_event_and_a_plain_event_can_ask_for_one(app, client):
    user_id = uuid.uuid4()
    shown = notice(app, client, user_id, type="task", event="task_due", ack={"required": True, "deadline": "PT2H"})
    assert shown["ack_required"] is True
    not_needed = notice(app, client, user_id, ack={"required": False})
    assert not_needed["ack_required"] is False


def test_the_services_view_shows_each_users_state(app, client, db):
    users = sorted([uuid.uuid4() for _ in range(3)], key=str)
    accepted = trigger(client, users, **TERMS)
    run_jobs(app)
    nid = client.get("/v1/notifications", headers=bearer(users[0])).get_json()["items"][0]["id"]
    assert ack(client, users[0], nid).status_code == 200
    with db.cursor() as cur:
        cur.execute("UPDATE notifications SET ack_deadline = now() - interval '1 minute' WHERE user_id = %s",
                    (users[2],))
    view = client.get(accepted["status_url"], headers=SERVICE).get_json()["ack"]
    assert (view["acknowledged"], view["pending"], view["overdue"]) == (1, 1, 1)
    assert [(u["user_id"], u["state"]) for u in view["users"]] == [
        (str(users[0]), "acknowledged"), (str(users[1]), "pending"), (str(users[2]), "overdue")]


def test_stats_give_the_ack_rate_and_time_to_ack_per_event(app, client, db):
    users = [uuid.uuid4() for _ in range(4)]
    trigger(client, users, **TERMS)
    run_jobs(app)
    for user_id in users[:2]:
        nid = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"][0]["id"]
        assert ack(client, user_id, nid).status_code == 200
    with db.cursor() as cur:   # one took 10 minutes, the other 30; one of the others is past its deadline
        cur.execute("UPDATE notifications SET acked_at = created_at + interval '10 minutes' WHERE user_id = %s",
                    (users[0],))
        cur.execute("UPDATE notifications SET acked_at = created_at + interval '30 minutes' WHERE user_id = %s",
                    (users[1],))
        cur.execute("UPDATE notifications SET ack_deadline = now() - interval '1 second' WHERE user_id = %s",
                    (users[2],))
    now = datetime.datetime.now(datetime.timezone.utc)
    window = {"from": (now - datetime.timedelta(hours=1)).isoformat(), "to": (now + datetime.timedelta(hours=1)).isoformat()}
    body = client.get("/v1/notifications/stats", headers=SERVICE, query_string=window).get_json()
    assert body["acknowledgements"] == {"security.terms_updated": {
        "required": 4, "acknowledged": 2, "ack_rate": 0.5, "median_seconds_to_ack": 1200.0, "overdue": 1}}


# ---------------------------------------------------------------- escalation


def test_an_unacknowledged_notice_escalates_once_and_an_acknowledged_one_does_not(mail_app, smtp, db):
    client = mail_app.test_client()
    waiting, acknowledging = uuid.uuid4(), uuid.uuid4()
    for user_id in (waiting, acknowledging):
        put_contact(client, user_id, email=f"{user_id.hex[:8]}@example.org")
    trigger(client, [waiting, acknowledging], **TERMS, ack=ONE_STEP)
    run_jobs(mail_app)
    assert smtp.messages == []                          # terms_updated goes in-app only
    nid = client.get("/v1/notifications", headers=bearer(acknowledging)).get_json()["items"][0]["id"]
    assert ack(client, acknowledging, nid).status_code == 200
    steps_pass(mail_app, db)
    assert [m["rcpt_tos"] for m in smtp.messages] == [[f"{waiting.hex[:8]}@example.org"]]
    steps_pass(mail_app, db)                            # a second pass finds nothing to do
    assert len(smtp.messages) == 1
    assert dict(scalar(db, "SELECT json_object_agg(user_id, status) FROM escalations")) == {
        str(waiting): "done", str(acknowledging): "cancelled"}


def test_a_step_does_not_send_once_acknowledged_before_its_delivery_job_ran(mail_app, smtp, db):
    from app.dispatch import schedule
    client = mail_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="u@example.org")
    trigger(client, [user_id], **TERMS, ack=ONE_STEP)
    run_jobs(mail_app)
    with db.cursor() as cur:
        cur.execute("UPDATE escalations SET due_at = now()")
    schedule.tick(mail_app)                             # the step ran: its email's job is queued
    nid = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"][0]["id"]
    assert ack(client, user_id, nid).status_code == 200
    run_jobs(mail_app)
    assert smtp.messages == []
    assert scalar(db, "SELECT status FROM deliveries WHERE channel = 'email'") == "skipped"


TASK = {"type": "task", "event": "task_due", "title": "Sign the form"}   # neither locked nor urgent; in-app only


def test_an_opt_out_of_the_channel_for_the_group_holds_against_a_step(mail_app, smtp, db):
    client = mail_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="u@example.org")
    r = client.put("/v1/notifications/preferences", headers=bearer(user_id),
                   json={"changes": [{"group": "task", "channel": "email", "enabled": False}]})
    assert r.status_code == 200, r.get_json()
    trigger(client, [user_id], **TASK, ack=ONE_STEP)
    run_jobs(mail_app)
    steps_pass(mail_app, db)
    assert smtp.messages == []
    assert scalar(db, "SELECT reason FROM deliveries WHERE channel = 'email'") == \
        "switched off in the user's preferences"


def test_a_locked_events_step_is_sent_despite_the_opt_out(mail_app, smtp, db):
    client = mail_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="u@example.org")
    client.put("/v1/notifications/preferences", headers=bearer(user_id),
               json={"changes": [{"group": "security", "channel": "email", "enabled": False}]})
    # login_alert is locked; limited to in-app here, so email comes only from the step
    trigger(client, [user_id], type="security", event="login_alert", title="New login", channels=["system"],
            ack=ONE_STEP)
    run_jobs(mail_app)
    steps_pass(mail_app, db)
    assert len(smtp.messages) == 1


def test_quiet_hours_hold_a_step_but_not_an_urgent_events(mail_app, smtp, db):
    client = mail_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="u@example.org", timezone="UTC")
    now = datetime.datetime.now(datetime.timezone.utc)
    window = {"start": (now - datetime.timedelta(hours=1)).strftime("%H:%M"),
              "end": (now + datetime.timedelta(hours=1)).strftime("%H:%M"), "channels": ["email"]}
    assert client.put("/v1/notifications/preferences", headers=bearer(user_id),
                      json={"quiet_hours": window}).status_code == 200
    trigger(client, [user_id], **TASK, ack=ONE_STEP)                         # not urgent: held
    trigger(client, [user_id], type="security", event="password_changed", title="Urgent", channels=["system"],
            ack=ONE_STEP)                                                       # urgent and locked: sent
    run_jobs(mail_app)
    steps_pass(mail_app, db)
    held = scalar(db, "SELECT d.reason FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                      " WHERE n.event = 'task_due' AND d.channel = 'email'")
    assert held.startswith("held by quiet hours until ")
    (sent,) = smtp.messages                           # the urgent notice's step alone, as a security event
    assert "secure message" in sent["message"]["Subject"]   # is sent: a teaser (docs/channels.md#teasers)


def test_an_expired_notice_does_not_escalate(mail_app, smtp, db):
    client = mail_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="u@example.org")
    expires = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)).isoformat()
    trigger(client, [user_id], **TERMS, ack=ONE_STEP, expires_at=expires)
    run_jobs(mail_app)
    with db.cursor() as cur:
        cur.execute("UPDATE notifications SET expires_at = now() - interval '1 second'")
    steps_pass(mail_app, db)
    assert smtp.messages == []
    assert scalar(db, "SELECT reason FROM escalations") == "expired"


# ---------------------------------------------------------------- the real processes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_over_http_an_unacknowledged_notice_escalates_to_email_and_an_acknowledged_one_does_not(
        processes, base_env, tmp_path, clean, smtp, db):
    import requests
    from testkit.config_files import queue_config
    env = dict(base_env, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")
    processes.start_worker(env, queue_config=queue_config(tmp_path))
    web = processes.start_web(env, workers=1)
    waiting, acknowledging = uuid.uuid4(), uuid.uuid4()
    for user_id in (waiting, acknowledging):
        assert requests.put(f"{web.url}/v1/notifications/users/{user_id}/contact", headers=SERVICE, timeout=10,
                            json={"email": f"{user_id.hex[:8]}@example.org"}).status_code == 200
    step = {"required": True, "deadline": "PT1H", "escalate": [{"after": "PT6S", "channels": ["email"]}]}
    r = web.post("/v1/notifications/trigger", headers=SERVICE,
                 json=dict(TERMS, user_ids=[str(waiting), str(acknowledging)], ack=step))
    assert r.status_code == 202
    accepted = r.json()
    inbox = wait_until(lambda: web.get("/v1/notifications", headers=bearer(acknowledging)).json()["items"], 20)
    r = requests.post(f"{web.url}/v1/notifications/{inbox[0]['id']}/ack", headers=bearer(acknowledging), timeout=10)
    assert r.status_code == 200 and r.json()["acked_at"]
    wait_until(lambda: smtp.messages, 30, message="the escalation email")
    wait_until(lambda: scalar(db, "SELECT count(*) FROM escalations WHERE status = 'pending'") == 0
               and scalar(db, "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')") == 0, 20)
    assert [m["rcpt_tos"] for m in smtp.messages] == [[f"{waiting.hex[:8]}@example.org"]]
    view = web.get(accepted["status_url"], headers=SERVICE).json()["ack"]
    assert {u["user_id"]: u["state"] for u in view["users"]} == {str(waiting): "pending",
                                                                   str(acknowledging): "acknowledged"}
