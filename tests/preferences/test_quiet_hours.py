"""Quiet hours on the real path: email held until the window ends, in-app and urgent go at once."""
import datetime

import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.config_files import channel_config
from testkit.jobs import fast_forward, run_jobs, scheduled

UTC = datetime.timezone.utc


@pytest.fixture
def app(make_app, tmp_path, smtp):
    config = channel_config(tmp_path, {"email": {"enabled": True}})   # security.login_alert: locked, urgent
    return make_app(**config, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port),
                    MAIL_DEFAULT_SENDER="n@bank.example", MAIL_TIMEOUT="5")


def window_around_now(minutes_before=60, minutes_after=60):
    now = datetime.datetime.now(UTC)
    start = (now - datetime.timedelta(minutes=minutes_before)).strftime("%H:%M")
    end = (now + datetime.timedelta(minutes=minutes_after)).strftime("%H:%M")
    return {"start": start, "end": end, "channels": ["email"]}


def set_quiet(client, headers, window):
    r = client.put("/v1/notifications/preferences", headers=headers, json={"quiet_hours": window})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["quiet_hours"]


def test_email_held_until_window_end_then_sent(app, user, smtp):
    client = app.test_client()
    user_id, headers = user
    put_contact(client, user_id, email="u@example.org", timezone="UTC")
    shown = set_quiet(client, headers, window_around_now())
    assert shown["channels"] == ["email"] and shown["timezone"] == "UTC"
    trigger(client, [user_id])
    run_jobs(app)
    state = deliveries(client, headers)
    assert state["system"]["status"] == "sent"
    assert state["email"]["status"] == "pending"
    assert state["email"]["attempts"] == 0
    assert state["email"]["reason"].startswith("held by quiet hours until ")
    assert smtp.messages == []
    due = list(scheduled(app).values())
    assert len(due) == 1
    expected_end = datetime.datetime.now(UTC) + datetime.timedelta(minutes=60)
    assert abs((due[0].replace(tzinfo=UTC) - expected_end).total_seconds()) < 120
    # the window is over (the user removed it): the scheduled job sends it, once
    set_quiet(client, headers, None)
    assert fast_forward(app) == 1
    run_jobs(app)
    assert deliveries(client, headers)["email"]["status"] == "sent"
    assert len(smtp.messages) == 1


@pytest.mark.parametrize("window, event", [
    (dict(minutes_before=-60, minutes_after=120), {}),                          # the window starts in an hour
    ({}, dict(type="security", event="login_alert")),                           # locked and urgent: goes through
], ids=["outside_the_window", "locked_urgent_event_inside_it"])
def test_email_goes_at_once(app, user, smtp, window, event):
    client = app.test_client()
    user_id, headers = user
    put_contact(client, user_id, email="u@example.org")
    set_quiet(client, headers, window_around_now(**window))
    trigger(client, [user_id], **event)
    run_jobs(app)
    assert deliveries(client, headers)["email"]["status"] == "sent"
    assert len(smtp.messages) == 1 and scheduled(app) == {}


def test_quiet_hours_validation(app, user):
    client = app.test_client()
    _, headers = user
    r = client.put("/v1/notifications/preferences", headers=headers,
                   json={"quiet_hours": {"start": "25:00", "end": "07:00"}})
    assert r.status_code == 422 and "quiet_hours" in r.get_json()["errors"]
    r = client.put("/v1/notifications/preferences", headers=headers,
                   json={"quiet_hours": {"start": "22:00", "end": "07:00", "channels": ["system"]}})
    assert r.status_code == 400 and r.get_json()["code"] == "notifications_m.invalid_channel"
    r = client.put("/v1/notifications/preferences", headers=headers, json={})
    assert r.status_code == 422
    default = set_quiet(client, headers, {"start": "22:00", "end": "07:00"})
    assert default == {"start": "22:00", "end": "07:00", "channels": ["email"], "timezone": "UTC"}
