"""Channel fallback (`fallback: [{channel: sms, when: email_failed}]`): the SMS goes out once, only
when the email failed for good, and both deliveries say so. A real SMTP server (aiosmtpd) that
refuses the address, a local server of Twilio's shape, the RQ worker in burst mode."""
import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.jobs import drain, run_jobs

PHONE = "+14155550100"


def sms_options(twilio):
    """The SMS channel, through the local Twilio."""
    return {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
            "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 5}


@pytest.fixture
def build(channel_app, smtp, twilio):
    def make(fallback=None, attempts=3):
        channels = {"email": {"enabled": True}, "sms": sms_options(twilio)}
        event = {"channels": ["system", "email"],
                 "fallback": fallback if fallback is not None else [{"channel": "sms", "when": "email_failed"}]}
        return channel_app(channels, {"payment": {"payment_failed": event}}, attempts, (60, 600),
                           MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")
    return make


def send(app, user):
    user_id, headers = user
    client = app.test_client()
    put_contact(client, user_id, email=f"u-{user_id.hex[:8]}@example.org", phone=PHONE)
    trigger(client, [user_id], type="payment", event="payment_failed", title="Payment failed", content="Card declined")
    return client


def test_the_sms_goes_out_once_when_the_email_failed_for_good(build, smtp, twilio, user):
    app = build()
    smtp.refuse_rcpt = "550 5.1.1 no such mailbox"
    client = send(app, user)
    run_jobs(app)

    assert len(twilio.messages) == 1 and twilio.messages[0]["Body"] == "Payment failed: Card declined"
    sent = deliveries(client, user[1])
    assert sent["email"]["status"] == "failed" and "falls back to sms" in sent["email"]["reason"]
    assert sent["sms"]["status"] == "sent" and sent["sms"]["reason"] == "fallback: email failed"
    assert [a["outcome"] for a in sent["sms"]["history"]] == ["sent"]
    run_jobs(app)
    assert len(twilio.messages) == 1


def test_an_email_that_fails_retryably_falls_back_only_after_its_last_attempt(build, smtp, twilio, user):
    app = build(attempts=2)
    smtp.refuse_rcpt = "450 4.2.0 mailbox busy"
    client = send(app, user)
    run_jobs(app)
    assert twilio.messages == [] and "sms" not in deliveries(client, user[1])   # a retry is still due
    drain(app)
    assert len(twilio.messages) == 1
    assert deliveries(client, user[1])["email"]["attempts"] == 2


def test_no_fallback_when_the_email_went_out(build, smtp, twilio, user):
    app = build()
    client = send(app, user)
    run_jobs(app)
    assert len(smtp.messages) == 1 and twilio.requests == []
    assert set(deliveries(client, user[1])) == {"system", "email"}


def test_a_user_who_switched_sms_off_gets_no_fallback_sms(build, smtp, twilio, user):
    app = build()
    smtp.refuse_rcpt = "550 5.1.1 no such mailbox"
    client = app.test_client()
    r = client.put("/v1/notifications/preferences", headers=user[1],
                   json={"changes": [{"group": "payment", "channel": "sms", "enabled": False}]})
    assert r.status_code in (200, 204), r.get_data(as_text=True)
    send(app, user)
    run_jobs(app)
    assert twilio.requests == []
    assert deliveries(client, user[1])["sms"]["status"] == "skipped"


@pytest.mark.parametrize("fallback, where", [
    ([{"channel": "sms", "when": "email_not_delivered_within: PT2M"}], "fallback[0].when"),
    ([{"channel": "sms", "when": "push_failed"}], "fallback[0].when"),
    ([{"channel": "email", "when": "email_failed"}], "fallback[0].channel"),
    ([{"channel": "fax", "when": "email_failed"}], "fallback[0].channel"),
    ([{"channel": "sms"}], "fallback[0]"),
])
def test_a_bad_fallback_stops_start_up(build, fallback, where):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        build(fallback=fallback)
    assert caught.value.key == "groups.payment.events.payment_failed." + where
