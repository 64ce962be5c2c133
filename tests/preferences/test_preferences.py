"""Preferences: resolution paths, validation, locked events, and delivery honouring them."""
import threading
import uuid

import pytest

from testkit.api import trigger
from testkit.identity import make_token
from testkit.jobs import run_jobs

CUSTOMER = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
OTHER_CUSTOMER = uuid.uuid4()


def channels_of(body, group, event):
    for g in body["groups"]:
        if g["group"] == group:
            for e in g["events"]:
                if e["event"] == event:
                    return e["channels"]
    raise AssertionError(f"{group}.{event} not listed")


def put(client, headers, *changes, query=""):
    return client.put("/v1/notifications/preferences" + query, headers=headers, json={"changes": list(changes)})


def test_defaults_listed_for_every_group_and_event(client, user):
    _, headers = user
    body = client.get("/v1/notifications/preferences", headers=headers).get_json()
    assert [g["group"] for g in body["groups"]] == ["chat", "task", "payment", "security", "marketing"]
    chat = channels_of(body, "chat", "message_received")
    assert chat["system"] == {"enabled": True, "locked": False, "source": "default"}
    assert chat["email"] == {"enabled": True, "locked": False, "source": "default"}
    assert chat["sms"] == {"enabled": False, "locked": False, "source": "default"}
    login = channels_of(body, "security", "login_alert")
    assert login["sms"] == {"enabled": True, "locked": True, "source": "default"}


def test_group_off_for_all_customers(client, user):
    _, headers = user
    body = put(client, headers, {"group": "chats", "enabled": False}).get_json()
    chat = channels_of(body, "chat", "message_received")
    assert chat["system"] == {"enabled": False, "locked": False, "source": "user"}
    assert chat["email"]["enabled"] is False
    assert channels_of(body, "task", "task_assigned")["system"]["enabled"] is True


def test_event_off_and_channel_off(client, user):
    _, headers = user
    put(client, headers, {"group": "chat", "event": "mention", "enabled": False},
        {"group": "chat", "event": "message_received", "channel": "email", "enabled": False})
    body = client.get("/v1/notifications/preferences", headers=headers).get_json()
    assert channels_of(body, "chat", "mention")["system"]["enabled"] is False
    received = channels_of(body, "chat", "message_received")
    assert received["email"] == {"enabled": False, "locked": False, "source": "user"}
    assert received["system"] == {"enabled": True, "locked": False, "source": "default"}


def test_customer_choice_beats_global_choice(client, user):
    _, headers = user
    put(client, headers, {"group": "chat", "enabled": False},
        {"group": "chat", "event": "message_received", "channel": "email", "customer_id": str(CUSTOMER),
         "enabled": True})
    mine = client.get(f"/v1/notifications/preferences?customer_id={CUSTOMER}", headers=headers).get_json()
    received = channels_of(mine, "chat", "message_received")
    assert received["email"] == {"enabled": True, "locked": False, "source": "customer"}
    assert received["system"] == {"enabled": False, "locked": False, "source": "user"}
    other = client.get(f"/v1/notifications/preferences?customer_id={OTHER_CUSTOMER}", headers=headers).get_json()
    assert channels_of(other, "chat", "message_received")["email"]["enabled"] is False


def test_opt_in_to_a_non_default_channel(client, user):
    _, headers = user
    body = put(client, headers, {"group": "chat", "event": "message_received", "channel": "sms",
                                 "enabled": True}).get_json()
    assert channels_of(body, "chat", "message_received")["sms"] == {"enabled": True, "locked": False,
                                                                     "source": "user"}


@pytest.mark.parametrize("change, code", [
    ({"group": "nope", "enabled": False}, "invalid_group"),
    ({"group": "chat", "event": "nope", "enabled": False}, "invalid_event"),
    ({"group": "chat", "channel": "fax", "enabled": False}, "invalid_channel"),
])
def test_invalid_names_apply_nothing(client, user, db, change, code):
    _, headers = user
    r = put(client, headers, {"group": "task", "enabled": False}, change)
    assert r.status_code == 400
    assert r.get_json()["code"] == f"notifications_m.{code}"
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM preferences")
        assert cur.fetchone()[0] == 0


def test_locked_event_cannot_be_switched_off(client, user, db):
    _, headers = user
    r = put(client, headers, {"group": "task", "enabled": False},
            {"group": "security", "event": "login_alert", "channel": "email", "enabled": False})
    assert r.status_code == 400
    assert r.get_json()["code"] == "notifications_m.event_locked"
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM preferences")
        assert cur.fetchone()[0] == 0


def test_group_off_leaves_locked_events_on(client, user):
    _, headers = user
    body = put(client, headers, {"group": "security", "enabled": False}).get_json()
    assert channels_of(body, "security", "login_alert")["system"] == {"enabled": True, "locked": True,
                                                                       "source": "default"}


def test_bad_bodies_are_422(client, user):
    _, headers = user
    for body in ({}, {"changes": []}, {"changes": [{"group": "chat"}]},
                 {"changes": [{"group": "chat", "enabled": "no"}]}, {"changes": [{"group": "chat", "enabled": False,
                                                                                  "colour": 1}]}):
        r = client.put("/v1/notifications/preferences", headers=headers, json=body)
        assert r.status_code == 422, body
        assert r.get_json()["code"] == "notifications_m.invalid_request"


def test_foreign_customer_is_403(client):
    headers = {"Authorization": f"Bearer {make_token(customers=[CUSTOMER])}"}
    assert client.get(f"/v1/notifications/preferences?customer_id={OTHER_CUSTOMER}",
                      headers=headers).status_code == 403
    r = put(client, headers, {"group": "chat", "customer_id": str(OTHER_CUSTOMER), "enabled": False})
    assert r.status_code == 403
    assert r.get_json()["code"] == "notifications_m.invalid_customer_id"


def test_concurrent_puts_both_apply(app, user):
    _, headers = user
    events = ["message_received", "mention"]
    results = []

    def change(event):
        with app.test_client() as c:
            results.append(put(c, headers, {"group": "chat", "event": event, "enabled": False}).status_code)

    threads = [threading.Thread(target=change, args=(e,)) for e in events for _ in range(5)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == [200] * 10
    body = app.test_client().get("/v1/notifications/preferences", headers=headers).get_json()
    for event in events:
        assert channels_of(body, "chat", event)["system"]["enabled"] is False


def deliveries(db, user_id):
    with db.cursor() as cur:
        cur.execute("SELECT d.channel, d.status, d.reason FROM deliveries d JOIN notifications n"
                    " ON n.id = d.notification_id WHERE n.user_id = %s ORDER BY d.channel", (user_id,))
        return cur.fetchall()


def test_all_channels_off_is_recorded_but_not_in_inbox(app, client, user, db):
    user_id, headers = user
    put(client, headers, {"group": "chat", "enabled": False})
    trigger(client, [user_id], customer_id=str(CUSTOMER))
    run_jobs(app)
    with db.cursor() as cur:
        cur.execute("SELECT in_app FROM notifications WHERE user_id = %s", (user_id,))
        assert cur.fetchall() == [(False,)]
    assert client.get("/v1/notifications", headers=headers).get_json()["total"] == 0
    assert deliveries(db, user_id) == [("email", "skipped", "switched off in the user's preferences"),
                                       ("system", "skipped", "switched off in the user's preferences")]


def test_preference_changed_after_trigger_applies_at_delivery(app, client, user, db):
    user_id, headers = user
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id, email) VALUES (%s, 'u@example.com')", (user_id,))
    trigger(client, [user_id], customer_id=str(CUSTOMER))
    run_jobs(app, ("dispatch",))   # dispatch only: the email delivery job waits in its queue
    assert ("email", "pending", None) in deliveries(db, user_id)
    put(client, headers, {"group": "chat", "event": "message_received", "channel": "email", "enabled": False})
    run_jobs(app)
    assert ("email", "skipped", "switched off in the user's preferences") in deliveries(db, user_id)
    assert client.get("/v1/notifications", headers=headers).get_json()["total"] == 1
