"""PII-minimal external channels: an event with `external_content: teaser` reaches email and SMS as a
teaser ("you have a new secure message", a link to the inbox), never with its title or content, through
a real SMTP server (aiosmtpd) and a local server of Twilio's shape; the inbox keeps the full text."""
import pytest

from testkit.api import deliveries, put_contact, trigger
from testkit.jobs import run_jobs

PUBLIC_URL = "https://notify.example.com"
TITLE = "Balance 12,345.67 EUR"
CONTENT = "Transfer of 999.00 EUR to ACME Holdings was declined"
SECRETS = (TITLE, CONTENT, "12,345.67", "ACME Holdings", "999.00")


@pytest.fixture
def build(channel_app, smtp, twilio):
    def make(external_content="teaser", templates=None, link_url=None):
        channels = {"email": {"enabled": True},
                    "sms": {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
                            "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 5}}
        events = {"payment": {"payment_failed": {"channels": ["system", "email", "sms"],
                                                 "external_content": external_content}}}
        return channel_app(channels, events, templates=templates, MAIL_SERVER="127.0.0.1",
                           MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5", PUBLIC_URL=PUBLIC_URL)
    return make


def send(app, user):
    user_id, headers = user
    client = app.test_client()
    put_contact(client, user_id, email=f"u-{user_id.hex[:8]}@example.org", phone="+14155550100")
    trigger(client, [user_id], type="payment", event="payment_failed", title=TITLE, content=CONTENT,
            link_url="/payments/acme-999", link_text="See ACME Holdings payment")
    run_jobs(app)
    return client


def every_part_of(received):
    """The raw message, each header decoded, and each body part decoded: where a secret could hide."""
    message = received["message"]
    yield received["data"].decode("utf-8", "replace")
    for name, value in message.items():
        yield f"{name}: {value}"
    for part in message.walk():
        if not part.is_multipart():
            yield part.get_content()


def test_a_teaser_event_sends_neither_title_nor_content_by_email_or_sms(build, smtp, twilio, user):
    client = send(build(), user)

    (received,) = smtp.messages
    texts = list(every_part_of(received))
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret
    assert received["message"]["Subject"] == "Your bank: you have a new secure message"
    text = received["message"].get_body(preferencelist=("plain",)).get_content()
    assert "Open the app to read it." in text and f"{PUBLIC_URL}/inbox" in text
    assert "/payments/acme-999" not in "".join(texts)

    (sms,) = twilio.messages
    for secret in SECRETS:
        assert secret not in sms["Body"]
    assert sms["Body"] == f"Your bank: you have a new secure message. Open the app to read it. {PUBLIC_URL}/inbox"

    # the in-app notification keeps the full text
    inbox = client.get("/v1/notifications", headers=user[1]).get_json()["items"]
    assert (inbox[0]["title"], inbox[0]["content"]) == (TITLE, CONTENT)
    sent = deliveries(client, user[1])
    assert sent["email"]["status"] == "sent" and sent["sms"]["status"] == "sent"


def test_teaser_templates_and_the_bank_name_are_configuration(build, smtp, twilio, user):
    templates = {"default": {"email_subject": "{title}", "sms": "{title}: {content}",
                             "teaser_title": "{bank_name} secure message",
                             "teaser_email_subject": "{bank_name}: new message for you",
                             "teaser_sms": "{bank_name}: new secure message {inbox_url}"}}
    send(build(templates=templates), user)
    (received,) = smtp.messages
    assert received["message"]["Subject"] == "Your bank: new message for you"
    html = received["message"].get_body(preferencelist=("html",)).get_content()
    assert "Your bank secure message" in html and TITLE not in html
    assert twilio.messages[0]["Body"] == f"Your bank: new secure message {PUBLIC_URL}/inbox"


def test_even_a_template_naming_title_and_content_gets_the_teaser(build, smtp, twilio, user):
    """An operator's own `sms: "{title}: {content}"` for the event renders the teaser's title and text."""
    templates = {"default": {"email_subject": "{title} - {content}", "sms": "{title}: {content} {rec_id}"},
                 "payment.payment_failed": {"email_text": "{title}\n{content}\n{link_url}"}}
    send(build(templates=templates), user)
    for text in every_part_of(smtp.messages[0]):
        assert not any(secret in text for secret in SECRETS)
    assert not any(secret in twilio.messages[0]["Body"] for secret in SECRETS)
    assert twilio.messages[0]["Body"].startswith("Your bank: you have a new secure message")


def test_a_full_event_still_carries_its_text(build, smtp, twilio, user):
    send(build(external_content="full"), user)
    assert smtp.messages[0]["message"]["Subject"] == TITLE
    assert twilio.messages[0]["Body"] == f"{TITLE}: {CONTENT}"


def test_payment_and_security_ship_as_teasers(make_app):
    domain = make_app().config["DOMAIN"]
    for group in ("payment", "security"):
        assert {e.external_content for e in domain.groups[group].events.values()} == {"teaser"}
    assert {e.external_content for e in domain.groups["chat"].events.values()} == {"full"}


@pytest.mark.parametrize("value", ["partial", True, ""])
def test_an_unknown_external_content_stops_start_up(build, value):
    from app.errors import ConfigError
    with pytest.raises(ConfigError) as caught:
        build(external_content=value)
    assert "groups.payment.events.payment_failed.external_content" in str(caught.value)


def test_a_teaser_event_never_carries_an_amount(build, smtp, twilio, user):
    """A trigger's `amounts` are template variables, and a teaser's templates get none: even an
    operator's teaser template that names one renders it empty."""
    user_id, _ = user
    app = build(templates={"default": {"teaser_email_subject": "Secure message {total}",
                                       "teaser_sms": "Secure message {total}"}})
    client = app.test_client()
    put_contact(client, user_id, email="amounts@example.org", phone="+14155550100", locale="de")
    trigger(client, [user_id], type="payment", event="payment_failed", title=TITLE, content=CONTENT,
            amounts={"total": {"amount": "12345.67", "currency": "EUR"}})
    run_jobs(app)
    (received,) = smtp.messages
    assert received["message"]["Subject"] == "Secure message"
    assert not any("12.345,67" in text or "12345" in text for text in every_part_of(received))
    assert twilio.messages[0]["Body"].strip() == "Secure message"
