"""Provider failover over real HTTP: an SMS channel with two providers, a server of Twilio's shape
(the primary, not idempotent) and a webhook gateway (the secondary), each a local server. The
primary answering 503, timing out, or down: every SMS is delivered once, through the secondary,
within the same attempt; its circuit breaker (state in Redis) opens and, after the cool-down, one
probe brings the traffic back to the primary."""
import time
import uuid

import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.jobs import fast_forward, run_jobs
from testkit.providers import FakeTwilio

PHONE = "+14155550100"


@pytest.fixture
def secondary(endpoint):
    return endpoint


@pytest.fixture
def build(channel_app, twilio, secondary):
    def make(failures=2, cooldown=30, timeout=5, attempts=3, **secondary_options):
        providers = [
            {"name": "twilio_primary", "type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
             "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": timeout},
            dict({"name": "webhook_secondary", "type": "webhook", "needs": "phone", "url": secondary.url + "/sms",
                  "body": {"to": "{recipient}", "text": "{title}: {content}"}, "timeout": timeout},
                 **secondary_options)]
        channels = {"sms": {"providers": providers, "breaker": {"failures": failures, "cooldown_seconds": cooldown}}}
        return channel_app(channels, {"chat": {"message_received": ["system", "sms"]}}, attempts)
    return make


def send(app, users, title="Your code is 123456"):
    """One trigger to these users (each with a phone); their jobs run; the client."""
    client = app.test_client()
    for user_id in users:
        put_contact(client, user_id, phone=PHONE)
    trigger(client, users, title=title, content="do not share it")
    run_jobs(app)
    return client


def sms_rows(db):
    """(status, provider of the sent row, providers tried) per SMS delivery, read from the database."""
    with db.cursor() as cur:
        cur.execute("SELECT d.status, array_agg(a.provider ORDER BY a.id) FILTER (WHERE a.outcome = 'sent'),"
                    " array_agg(a.provider ORDER BY a.id) FROM deliveries d"
                    " JOIN delivery_attempts a ON a.delivery_id = d.id WHERE d.channel = 'sms'"
                    " GROUP BY d.id, d.notification_seq")
        return cur.fetchall()


def bodies(server):
    return [r.json["to"] for r in server.requests]


def test_a_failing_primary_sends_through_the_secondary_and_its_breaker_opens(build, twilio, secondary, user, db):
    user_id, headers = user
    app = build(failures=2)
    twilio.always = (503, {"code": 20500, "message": "Service unavailable"}, 0)
    others = [uuid.uuid4() for _ in range(3)]
    client = send(app, [user_id, *others])

    assert len(secondary.requests) == 4 and bodies(secondary) == [PHONE] * 4   # each one once
    assert len(twilio.requests) == 2      # then its breaker was open: passed over
    assert twilio.messages == []
    assert sorted(r[0] for r in sms_rows(db)) == ["sent"] * 4
    assert all(sent == ["webhook_secondary"] for _, sent, _ in sms_rows(db))

    sms = deliveries(client, headers)["sms"]
    assert sms["status"] == "sent" and sms["attempts"] == 1
    assert sms["provider_message_id"].startswith("msg-")
    tried = [(a["attempt"], a["outcome"], a["provider"]) for a in sms["history"]]
    assert tried[-1] == (1, "sent", "webhook_secondary")
    assert all(a == 1 for a, _, _ in tried)
    if len(tried) == 2:   # this user's SMS was among the two that tried the primary
        assert sms["history"][0]["error"].startswith("provider_error 503")

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'notif_provider_breaker_state{channel="sms",provider="twilio_primary"} 1.0' in metrics
    assert 'notif_provider_breaker_state{channel="sms",provider="webhook_secondary"} 0.0' in metrics
    assert 'notif_provider_sends_total{channel="sms",outcome="breaker_open",provider="twilio_primary"} 2.0' in metrics
    assert 'notif_provider_sends_total{channel="sms",outcome="sent",provider="webhook_secondary"}' in metrics


def test_a_primary_that_times_out_is_never_tried_again_for_that_sms(build, twilio, secondary, user, db):
    """A timeout after the request went out: Twilio may have the message (it is not idempotent), so
    the SMS goes through the secondary now, and a later attempt never goes back to the primary."""
    user_id, headers = user
    app = build(failures=5, timeout=0.5)
    twilio.fail(503, {"message": "slow"}, delay=1.5)      # answers after the client gave up
    secondary.fail(503)                                  # and the secondary fails this attempt too
    client = send(app, [user_id])
    assert len(twilio.requests) == 1 and len(secondary.requests) == 1
    sms = deliveries(client, headers)["sms"]
    assert sms["status"] == "pending"
    assert [(a["provider"], a["error"].split(":")[0]) for a in sms["history"]] == [
        ("twilio_primary", "provider_timeout"), ("webhook_secondary", "provider_error 503"), (None, "provider_error 503")]
    with db.cursor() as cur:
        cur.execute("SELECT provider FROM delivery_attempts WHERE maybe_accepted")
        assert cur.fetchall() == [("twilio_primary",)]

    fast_forward(app)
    run_jobs(app)
    assert len(twilio.requests) == 1 and len(secondary.requests) == 2   # the primary was left out
    sms = deliveries(client, headers)["sms"]
    assert (sms["status"], sms["attempts"], sms["history"][-1]["provider"]) == ("sent", 2, "webhook_secondary")


def test_503_then_timeouts_then_down_every_sms_once_then_back_after_the_probe(build, twilio, secondary, db):
    app = build(failures=2, cooldown=1, timeout=0.5)
    twilio.always = (503, {"message": "unavailable"}, 0)
    send(app, [uuid.uuid4() for _ in range(3)])
    twilio.always = (503, {"message": "slow"}, 1.5)       # answers after the client gave up
    time.sleep(1.1)   # past the cool-down: the next send probes the primary (it times out: open again)
    send(app, [uuid.uuid4() for _ in range(3)])
    twilio.stop()
    time.sleep(1.1)
    send(app, [uuid.uuid4() for _ in range(3)])           # the probe finds it down
    assert len(secondary.requests) == 9 and twilio.messages == []
    rows = sms_rows(db)
    assert len(rows) == 9 and all(status == "sent" and sent == ["webhook_secondary"] for status, sent, _ in rows)
    assert len(twilio.requests) == 2 + 1                  # two 503s, one probe that timed out; down: none

    # the primary back at its address: after the cool-down one probe goes to it, then all the traffic
    back = FakeTwilio(twilio.account_sid, twilio.auth_token, twilio.sender, port=twilio.port)
    try:
        time.sleep(1.1)
        send(app, [uuid.uuid4() for _ in range(3)])
        assert len(back.messages) == 3 and len(secondary.requests) == 9
        assert sum(1 for _, sent, _ in sms_rows(db) if sent == ["twilio_primary"]) == 3
        metrics = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'notif_provider_breaker_state{channel="sms",provider="twilio_primary"} 0.0' in metrics
    finally:
        back.stop()


def test_a_permanent_refusal_does_not_fail_over(build, twilio, secondary, user):
    user_id, headers = user
    app = build()
    twilio.fail(400, twilio.error(21211, "The 'To' number is not a valid phone number", 400))
    client = send(app, [user_id])
    assert secondary.requests == []
    sms = deliveries(client, headers)["sms"]
    assert sms["status"] == "failed" and "21211" in sms["last_error"]


@pytest.mark.parametrize("providers, where", [
    ([], "channels.sms.providers"),
    ([{"type": "twilio"}], "channels.sms.providers[0]"),
    ([{"name": "a", "type": "twilio"}, {"name": "a", "type": "webhook", "url": "x", "needs": "phone"}],
     "channels.sms.providers[1].name"),
    ([{"name": "a", "type": "twilio"}, {"name": "b", "type": "webhook", "url": "x"}], "channels.sms.providers"),
    ([{"name": "a", "type": "fax"}], "channels.sms.providers[0].type"),
    ([{"name": "a", "type": "twilio", "idempotent": "yes"}], "channels.sms.providers[0].idempotent"),
])
def test_a_bad_provider_list_stops_start_up(channel_app, providers, where):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        channel_app({"sms": {"providers": providers}}, {"chat": {"message_received": ["system", "sms"]}})
    assert caught.value.key == where


def test_a_provider_name_taken_by_another_channel_stops_start_up(channel_app):
    """Reports (`POST /v1/providers/{name}/reports`) name the provider alone: two channels may not
    share one, nor a provider take another channel's name."""
    from app.errors import ConfigError
    events = {"chat": {"message_received": ["system", "sms", "email"]}}
    twilio = {"name": "primary", "type": "twilio"}
    with pytest.raises(ConfigError) as caught:
        channel_app({"sms": {"providers": [twilio]},
                     "email": {"providers": [{"name": "primary", "type": "webhook", "url": "x", "needs": "email"}]}},
                    events)
    assert caught.value.key.endswith(".providers[0].name") and "primary" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        channel_app({"sms": {"providers": [dict(twilio, name="email")]}, "email": {"enabled": True}}, events)
    assert "'email'" in str(caught.value)
