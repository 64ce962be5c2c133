"""Delivery reports from providers and the `<channel>_not_delivered_within` fallback (issue 22).

A local server of Twilio's shape accepts the SMS; the test posts the status callback Twilio would
post (form fields, X-Twilio-Signature) to the service; a real SMTP server (aiosmtpd) takes the
fallback email; the RQ worker runs in burst mode and the scheduler's pass (app/dispatch/schedule.py
`tick`) is called as the worker's scheduler thread calls it. The email channel also reports, by a
signed JSON report (`report_secret`)."""
import hashlib
import hmac
import json
import threading
import time

import pytest

from app.dispatch.schedule import tick
from testkit.api import assert_envelope, deliveries, notification_id
from testkit.config_files import channel_config
from testkit.identity import SERVICE
from testkit.jobs import run_jobs
from testkit.processes import wait_until
from tests.deliveries.test_fallback import PHONE, send as trigger_payment, sms_options

SECRET = "email-report-secret-0123456789abcdef"
REPORTS = "/v1/providers/{}/reports"


@pytest.fixture
def build(channel_app, smtp, twilio):
    """build(watch="sms", within="PT5M"): an app whose `payment.payment_failed` goes out on `watch`
    (sms or email) and falls back to the other one when it is not reported delivered `within`."""
    def make(watch="sms", within="PT5M"):
        other = "email" if watch == "sms" else "sms"
        channels = {"email": {"enabled": True, "report_secret": SECRET}, "sms": sms_options(twilio)}
        event = {"channels": ["system", watch],
                 "fallback": [{"channel": other, "when": {f"{watch}_not_delivered_within": within}}]}
        return channel_app(channels, {"payment": {"payment_failed": event}}, 3, (60, 600),
                           MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")
    return make


def send(app, user):
    """The payment_failed notification to `user` (email and phone on file), its jobs run."""
    client = trigger_payment(app, user)
    run_jobs(app)
    return client


def report(client, twilio, status, error_code=None, token=None, message=None):
    """Post the status callback Twilio would post for the (last) SMS it accepted."""
    url, form, headers = twilio.status_callback(message or twilio.sent[-1], status, error_code, token)
    assert url.startswith("https://notify.example.com/")     # PUBLIC_URL's, as the SMS channel told Twilio
    return client.post(url.removeprefix("https://notify.example.com"), data=form, headers=headers)


def signed(client, body, secret=SECRET, at=None, provider="email"):
    """Post a JSON report signed in X-Notifications-Signature (docs/channels.md#delivery-reports)."""
    raw = json.dumps(body).encode()
    stamp = int(time.time() if at is None else at)
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return client.post(REPORTS.format(provider), data=raw, content_type="application/json",
                       headers={"X-Notifications-Signature": f"t={stamp},v1={mac}"})


def passes(app, times=1):
    """The scheduler thread's pass, `times` over."""
    for _ in range(times):
        tick(app)


def rows(db, sql, *args):
    with db.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


# ---------------------------------------------------------------- Twilio status callbacks


def test_twilio_signature_matches_twilios_documented_example():
    """The example of Twilio's security page: the app's check and the test's signer agree with it."""
    from app.deliveries.reports import twilio_signature
    from testkit.providers import twilio_signature as signer
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030",
              "To": "+18005551212"}
    for sign in (twilio_signature, signer):
        assert sign("https://mycompany.com/myapp.php?foo=1&bar=2", params, "12345") == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_a_delivered_report_is_recorded_once_and_no_fallback_follows(build, twilio, smtp, user, db):
    app = build(within="PT2S")
    client = send(app, user)
    assert len(twilio.sent) == 1 and smtp.messages == []

    sending = report(client, twilio, "sent")                   # intermediate: answered, ignored
    assert sending.status_code == 202 and sending.get_json()["recorded"] == 0
    first = report(client, twilio, "delivered")
    assert first.status_code == 202 and first.get_json()["recorded"] == 1
    assert first.headers.get("Cache-Control") == "no-store"
    again = report(client, twilio, "delivered")
    assert again.status_code == 202 and again.get_json()["recorded"] == 0
    late = report(client, twilio, "undelivered", 30003)        # a later, other report changes nothing
    assert late.status_code == 202 and late.get_json()["recorded"] == 0

    sms = deliveries(client, user[1])["sms"]
    assert sms["status"] == "sent" and sms["delivered_at"] is not None
    assert [(a["outcome"], a["provider"]) for a in sms["history"]] == [("sent", None), ("delivered", "sms")]
    assert sms["history"][1]["provider_message_id"] == twilio.sent[0]["sid"]

    time.sleep(2.2)                                            # past the deadline: nothing to fall back to
    passes(app, 2)
    run_jobs(app)
    assert smtp.messages == [] and "email" not in deliveries(client, user[1])
    assert rows(db, "SELECT status, reason FROM delivery_deadlines") == [("cancelled", "delivered")]

    evidence = client.get(f"/v1/notifications/{notification_id(client, user[1])}/evidence", headers=SERVICE)
    attempts = {d["channel"]: d for d in evidence.get_json()["deliveries"]}["sms"]["attempts"]
    assert [a["outcome"] for a in attempts] == ["sent", "delivered"]


def test_no_report_by_the_deadline_sends_the_fallback_once(build, twilio, smtp, user, db):
    app = build(within="PT1S")
    client = send(app, user)
    assert len(twilio.sent) == 1

    def passed():
        passes(app)
        return rows(db, "SELECT status FROM delivery_deadlines") == [("done",)]
    wait_until(passed, timeout=10, interval=0.2, message="the deadline row to run")
    # the scheduler of two workers at once, and again later: the fallback was written once
    threads = [threading.Thread(target=passes, args=(app, 2)) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    run_jobs(app)
    passes(app)
    run_jobs(app)

    assert len(smtp.messages) == 1
    assert smtp.messages[0]["rcpt_tos"] == [f"u-{user[0].hex[:8]}@example.org"]
    sent = deliveries(client, user[1])
    assert sent["email"]["status"] == "sent" and sent["email"]["reason"] == "fallback: sms not delivered within PT1S"
    assert sent["sms"]["status"] == "sent" and "not delivered within PT1S: falls back to email" in sent["sms"]["reason"]
    # a delivered report that comes after the fallback is still recorded, and starts nothing more
    assert report(client, twilio, "delivered").get_json()["recorded"] == 1
    run_jobs(app)
    assert len(smtp.messages) == 1


def test_an_undelivered_report_starts_the_fallback_at_once(build, twilio, smtp, user, db):
    app = build(within="PT5M")
    client = send(app, user)
    answer = report(client, twilio, "undelivered", 30003)
    assert answer.status_code == 202 and answer.get_json()["recorded"] == 1
    run_jobs(app)

    assert len(smtp.messages) == 1
    sent = deliveries(client, user[1])
    assert sent["sms"]["status"] == "undelivered" and sent["sms"]["last_error"] == "twilio undelivered (error 30003)"
    assert "falls back to email" in sent["sms"]["reason"]
    assert [a["outcome"] for a in sent["sms"]["history"]] == ["sent", "undelivered"]
    assert sent["email"]["status"] == "sent" and sent["email"]["reason"] == "fallback: sms undelivered"
    assert rows(db, "SELECT status FROM delivery_deadlines") == [("done",)]
    passes(app, 2)
    run_jobs(app)
    assert len(smtp.messages) == 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'notif_delivery_reports_total{outcome="recorded",provider="sms",status="undelivered"} 1.0' in metrics


def test_an_sms_refused_for_good_falls_back_at_once(build, twilio, smtp, user):
    """Not delivered within any time: a delivery that failed for good starts the fallback as
    `sms_failed` would, without waiting for the deadline."""
    app = build(within="PT5M")
    twilio.fail(400, twilio.error(21211, "The 'To' number is not a valid phone number", 400))
    client = send(app, user)
    run_jobs(app)
    sent = deliveries(client, user[1])
    assert sent["sms"]["status"] == "failed" and "falls back to email" in sent["sms"]["reason"]
    assert len(smtp.messages) == 1 and sent["email"]["status"] == "sent"


def test_a_failed_report_counts_as_undelivered(build, twilio, smtp, user):
    app = build()
    client = send(app, user)
    assert report(client, twilio, "failed", 30008).get_json()["recorded"] == 1
    run_jobs(app)
    assert deliveries(client, user[1])["sms"]["status"] == "undelivered" and len(smtp.messages) == 1


def test_a_bad_signature_is_refused_and_records_nothing(build, twilio, smtp, user, db):
    app = build()
    client = send(app, user)
    state = ("SELECT d.status, d.delivered_at, count(a.id) FROM deliveries d LEFT JOIN delivery_attempts a"
             " ON a.delivery_id = d.id GROUP BY d.id, d.notification_seq ORDER BY d.channel")
    before = rows(db, state)
    assert_envelope(report(client, twilio, "undelivered", token="not-the-auth-token"), 403, "invalid_signature")
    url, form, headers = twilio.status_callback(twilio.sent[-1], "undelivered")
    path = url.removeprefix("https://notify.example.com")
    assert_envelope(client.post(path, data=form), 403, "invalid_signature")                # no header
    assert_envelope(client.post(path, data=dict(form, MessageStatus="delivered"), headers=headers),
                    403, "invalid_signature")                                            # a field changed
    assert_envelope(client.post(path + "?x=1", data=form, headers=headers), 403, "invalid_signature")
    run_jobs(app)
    assert rows(db, state) == before
    assert smtp.messages == [] and rows(db, "SELECT status FROM delivery_deadlines") == [("pending",)]


def test_unknown_providers_and_messages(build, twilio, user):
    app = build()
    client = send(app, user)
    assert_envelope(client.post(REPORTS.format("nosuch"), data={"MessageSid": "SM1", "MessageStatus": "delivered"}),
                    404, "not_found")
    assert_envelope(client.post(REPORTS.format("system"), json={}), 404, "not_found")   # reports nothing
    unknown = report(client, twilio, "delivered", message={"sid": "SM" + "0" * 32, "To": PHONE,
                                                             "StatusCallback": twilio.sent[-1]["StatusCallback"]})
    assert unknown.status_code == 202 and unknown.get_json()["recorded"] == 0            # Twilio would retry a 4xx
    url, form, headers = twilio.status_callback(twilio.sent[-1], "delivered")
    missing = {k: v for k, v in form.items() if k != "MessageSid"}
    from testkit.providers import twilio_signature
    response = client.post(url.removeprefix("https://notify.example.com"), data=missing,
                           headers={"X-Twilio-Signature": twilio_signature(url, missing, twilio.auth_token)})
    assert assert_envelope(response, 422, "invalid_request")["errors"] == {"MessageSid": ["Missing data for required field."]}
    assert response.headers.get("Cache-Control") == "no-store"


# ---------------------------------------------------------------- signed JSON reports (email)


def test_signed_json_reports_of_the_email_provider(build, twilio, smtp, user, db):
    app = build(watch="email", within="PT5M")
    client = send(app, user)
    assert len(smtp.messages) == 1 and twilio.sent == []
    message_id = deliveries(client, user[1])["email"]["provider_message_id"]
    body = {"message_id": message_id, "status": "delivered", "at": "2026-01-02T03:04:05Z"}

    assert_envelope(signed(client, body, secret="x" * 36), 403, "invalid_signature")
    assert_envelope(signed(client, body, at=time.time() - 3600), 403, "invalid_signature")    # a replay
    assert_envelope(signed(client, dict(body, status="opened")), 422, "invalid_request")
    assert_envelope(signed(client, {"message_id": message_id}), 422, "invalid_request")
    assert_envelope(signed(client, body, provider="sms"), 403, "invalid_signature")   # Twilio's, not ours
    assert deliveries(client, user[1])["email"]["delivered_at"] is None

    assert signed(client, body).get_json()["recorded"] == 1
    assert signed(client, body).get_json()["recorded"] == 0
    email = deliveries(client, user[1])["email"]
    assert email["delivered_at"] == "2026-01-02T03:04:05.000Z"
    assert [a["outcome"] for a in email["history"]] == ["sent", "delivered"]
    assert rows(db, "SELECT status FROM delivery_deadlines") == [("cancelled",)]


def test_a_signed_undelivered_report_sends_the_sms_at_once(build, twilio, smtp, user):
    app = build(watch="email", within="PT5M")
    client = send(app, user)
    message_id = deliveries(client, user[1])["email"]["provider_message_id"]
    answer = signed(client, {"message_id": message_id, "status": "undelivered", "at": "2026-01-02T03:04:05Z",
                             "reason": "mailbox full"})
    assert answer.status_code == 202 and answer.get_json()["recorded"] == 1
    run_jobs(app)
    assert len(twilio.sent) == 1 and twilio.sent[0]["Body"] == "Payment failed: Card declined"
    sent = deliveries(client, user[1])
    assert sent["email"]["status"] == "undelivered" and sent["email"]["last_error"] == "mailbox full"
    assert sent["sms"]["reason"] == "fallback: email undelivered"


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("channels, when, where, says", [
    ({"email": {"enabled": True}}, {"email_not_delivered_within": "PT2M"}, "fallback[0].when",
     "does not report delivery"),
    ({"email": {"enabled": True, "report_secret": SECRET}}, {"email_not_delivered_within": "2 minutes"},
     "fallback[0].when.email_not_delivered_within", "ISO 8601 duration"),
    ({"email": {"enabled": True, "report_secret": SECRET}}, {"push_not_delivered_within": "PT2M"},
     "fallback[0].when", "external channel of the event"),
    ({"email": {"enabled": True, "report_secret": SECRET}}, "email_not_delivered_within: PT2M", "fallback[0].when",
     "must be"),
])
def test_a_report_deadline_needs_a_reporting_channel_and_a_duration(channel_app, twilio, channels, when, where,
                                                                     says):
    from app.errors import ConfigError
    event = {"channels": ["system", "email"], "fallback": [{"channel": "sms", "when": when}]}
    with pytest.raises(ConfigError) as caught:
        channel_app(dict(channels, sms=sms_options(twilio)), {"payment": {"payment_failed": event}})
    assert caught.value.key == "groups.payment.events.payment_failed." + where
    assert says in caught.value.problem


def test_a_failover_channel_reports_only_when_every_provider_does(channel_app, twilio):
    from app.errors import ConfigError
    twilio_provider = {"name": "twilio_primary", "type": "twilio", "base_url": twilio.url,
                       "account_sid": twilio.account_sid, "auth_token": twilio.auth_token, "from": twilio.sender}
    gateway = {"name": "gateway", "type": "webhook", "needs": "phone", "url": twilio.url}
    event = {"channels": ["system", "sms"], "fallback": [{"channel": "email",
                                                          "when": {"sms_not_delivered_within": "PT2M"}}]}
    with pytest.raises(ConfigError):
        channel_app({"email": {"enabled": True}, "sms": {"providers": [twilio_provider, gateway]}},
                    {"payment": {"payment_failed": event}})
    app = channel_app({"email": {"enabled": True},
                       "sms": {"providers": [twilio_provider, dict(gateway, report_secret=SECRET)]}},
                      {"payment": {"payment_failed": event}})
    from app.deliveries.reports import reporters
    assert {name: r.kind for name, r in reporters(app).items()} == {"twilio_primary": "twilio", "gateway": "signed"}


# ---------------------------------------------------------------- real worker processes


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_deadline_outlives_a_killed_worker_and_runs_once_with_two_workers(make_app, clean, tmp_path, twilio,
                                                                             smtp, processes, user, db):
    """The SMS is sent by a worker process that is then killed (SIGKILL, its whole group) before
    the deadline; two new workers' scheduler threads find the row: one email, not two."""
    channels = {"email": {"enabled": True}, "sms": sms_options(twilio)}
    events = {"payment": {"payment_failed": {"channels": ["system", "sms"], "fallback": [
        {"channel": "email", "when": {"sms_not_delivered_within": "PT3S"}}]}}}
    settings = dict(channel_config(tmp_path, channels, events), MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port),
                    MAIL_TIMEOUT="5", PUBLIC_URL="https://notify.example.com")
    app, env = make_app(**settings), dict(clean, **settings)
    worker = processes.start_worker(env)
    client = trigger_payment(app, user)
    wait_until(lambda: len(twilio.sent) == 1 and rows(db, "SELECT status FROM deliveries") == [("sent",)], 30,
               message=lambda: worker.output()[-2000:])
    worker.kill()
    assert rows(db, "SELECT status FROM delivery_deadlines") == [("pending",)] and smtp.messages == []

    processes.start_worker(env)
    processes.start_worker(env)
    wait_until(lambda: smtp.messages, 30, message="the fallback email")
    time.sleep(2)     # several more passes of both schedulers
    assert len(smtp.messages) == 1 and len(twilio.sent) == 1
    assert rows(db, "SELECT status FROM delivery_deadlines") == [("done",)]
    assert deliveries(client, user[1])["email"]["reason"] == "fallback: sms not delivered within PT3S"
