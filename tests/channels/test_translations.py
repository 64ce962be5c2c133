"""A trigger's per-locale text (`translations`), end to end: trigger -> RQ worker (in-process, burst)
-> stored notification, the user's stream channel, a real SMTP server and a Twilio-shaped server.
Each user gets the version of their contact's locale through de-AT → de → the trigger's own text;
the email's Content-Language names the locale used; bad translations are refused with the envelope."""
import json
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from testkit.api import assert_error, post_trigger, push, put_contact, trigger
from testkit.config_files import channel_config
from testkit.identity import SERVICE, bearer
from testkit.jobs import run_jobs
from tests.dispatch.test_dispatch import listening

TRANSLATIONS = {"de": {"title": "Zahlung fehlgeschlagen", "content": "Ihre Karte wurde abgelehnt"},
                "fr": {"title": "Paiement refusé"},
                "it": {"title": "Pagamento rifiutato", "content": "Carta rifiutata"}}
OWN = {"title": "Payment failed", "content": "Your card was declined"}


@pytest.fixture
def build(make_app, tmp_path, smtp, twilio):
    def make(users_per_chunk=100, templates=None, external_content="full"):
        channels = {"email": {"enabled": True},
                    "sms": {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
                            "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 5}}
        event = {"channels": ["system", "email", "sms"], "external_content": external_content}
        config = channel_config(tmp_path, channels, {"payment": {"payment_failed": event}},
                                templates=templates or {"default": {"email_subject": "{title}",
                                                                    "sms": "{title}: {content}"}})
        queue = yaml.safe_load(Path(config["QUEUE_CONFIG"]).read_text())
        queue["batch"]["users_per_chunk"] = users_per_chunk
        Path(config["QUEUE_CONFIG"]).write_text(yaml.safe_dump(queue))
        return make_app(PUBLIC_URL="https://notify.example.com", MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port),
                        MAIL_TIMEOUT="5", **config)
    return make


def send(client, users, **fields):
    return trigger(client, users, type="payment", event="payment_failed", translations=TRANSLATIONS,
                   **dict(OWN, **fields))


def inbox(client, user_id):
    response = client.get("/v1/notifications", headers=bearer(user_id))
    assert response.status_code == 200
    return response.get_json()["items"]


def emails_by_recipient(smtp):
    return {received["message"]["To"]: received["message"] for received in smtp.messages}


def test_a_german_contact_reads_the_german_text_in_the_inbox_on_the_stream_and_in_email_and_sms(build, smtp,
                                                                                                   twilio):
    app = build()
    client = app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="kunde@example.org", phone="+4915112345678", locale="de")
    with listening(app, user_id) as next_message:
        send(client, [user_id])
        run_jobs(app)
        published = next_message()
    assert json.loads(published.body)["title"] == "Zahlung fehlgeschlagen"
    [item] = inbox(client, user_id)
    assert (item["title"], item["content"]) == ("Zahlung fehlgeschlagen", "Ihre Karte wurde abgelehnt")
    [received] = smtp.messages
    message = received["message"]
    assert message["Subject"] == "Zahlung fehlgeschlagen" and message["Content-Language"] == "de"
    assert "Ihre Karte wurde abgelehnt" in message.get_body(preferencelist=("plain",)).get_content()
    assert "Ihre Karte wurde abgelehnt" in message.get_body(preferencelist=("html",)).get_content()
    assert twilio.messages[0]["Body"] == "Zahlung fehlgeschlagen: Ihre Karte wurde abgelehnt"


@pytest.mark.parametrize("users_per_chunk", [100, 2], ids=["batch", "chunked"])
def test_each_user_of_one_trigger_gets_their_locales_version_or_the_trigger_own(build, smtp, users_per_chunk):
    """de-AT falls back to de; fr has only a title (the content stays the trigger's own); pt-BR has
    no version and no catalogue, a user without a contact neither: the trigger's own text. Both
    fan-out paths: one batch, and a trigger bigger than a chunk (stored chunk by chunk)."""
    app = build(users_per_chunk)
    client = app.test_client()
    locales = {"de-AT": uuid.uuid4(), "fr-CA": uuid.uuid4(), "pt-BR": uuid.uuid4(), "it": uuid.uuid4()}
    for locale, user_id in locales.items():
        put_contact(client, user_id, email=f"{locale.lower()}@example.org", locale=locale)
    nobody = uuid.uuid4()
    send(client, [*locales.values(), nobody])
    run_jobs(app)
    shown = {locale: (inbox(client, u)[0]["title"], inbox(client, u)[0]["content"]) for locale, u in locales.items()}
    assert shown == {"de-AT": ("Zahlung fehlgeschlagen", "Ihre Karte wurde abgelehnt"),
                     "fr-CA": ("Paiement refusé", OWN["content"]),
                     "pt-BR": (OWN["title"], OWN["content"]),
                     "it": ("Pagamento rifiutato", "Carta rifiutata")}
    assert (inbox(client, nobody)[0]["title"], inbox(client, nobody)[0]["content"]) == (OWN["title"], OWN["content"])
    emails = emails_by_recipient(smtp)
    assert {to: (m["Subject"], m["Content-Language"]) for to, m in emails.items()} == {
        "de-at@example.org": ("Zahlung fehlgeschlagen", "de"),
        "fr-ca@example.org": ("Paiement refusé", "fr"),
        "pt-br@example.org": (OWN["title"], "en"),
        "it@example.org": ("Pagamento rifiutato", "it"),   # the text's locale, with no `it` catalogue
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_each_users_open_stream_gets_their_locales_text(clean, processes, streams):
    """Against the real processes: gunicorn holding the streams, `python -m workers` fanning out."""
    web = processes.start_web(clean, workers=1, keepalive=1)
    processes.start_worker(clean)
    german, other = uuid.uuid4(), uuid.uuid4()
    contact = requests.put(f"{web.url}/v1/notifications/users/{german}/contact", json={"locale": "de-CH"},
                           headers=SERVICE, timeout=10)
    assert contact.status_code == 200, contact.text
    opened = {user: streams(web, user) for user in (german, other)}
    for stream in opened.values():
        assert stream.ok
        stream.wait_named("unread")
    trigger(web, [german, other], title="New message", content="Hello",
            translations={"de": {"title": "Neue Nachricht", "content": "Hallo"}})
    for user, want in ((german, ("Neue Nachricht", "Hallo")), (other, ("New message", "Hello"))):
        (event,) = opened[user].wait_events(1)
        assert (event.json()["title"], event.json()["content"]) == want


def test_a_teaser_email_names_the_templates_locale_not_the_texts(build, smtp):
    """A teaser event's email carries none of the notification's text: an `it` contact's stored
    Italian text does not make it an Italian message (no `it` catalogue: English)."""
    app = build(external_content="teaser")
    client = app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="it@example.org", locale="it")
    send(client, [user_id])
    run_jobs(app)
    assert inbox(client, user_id)[0]["title"] == "Pagamento rifiutato"
    [received] = smtp.messages
    assert received["message"]["Content-Language"] == "en"
    assert "Pagamento" not in received["data"].decode("utf-8", "replace")


def test_a_translated_link_text_and_the_direct_push(build):
    app = build()
    client = app.test_client()
    german, other = uuid.uuid4(), uuid.uuid4()
    put_contact(client, german, locale="de-DE")
    trigger(client, [german], type="payment", event="payment_failed", title="Paid", link_url="/p/1",
            link_text="View", translations={"de": {"link_text": "Ansehen"}})
    run_jobs(app)
    assert (inbox(client, german)[0]["title"], inbox(client, german)[0]["link_text"]) == ("Paid", "Ansehen")
    with listening(app, german) as to_german, listening(app, other) as to_other:
        response = push(client, [german, other], type="payment", event="payment_failed", translations=TRANSLATIONS,
                        **OWN)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert json.loads(to_german().body)["title"] == "Zahlung fehlgeschlagen"
        assert json.loads(to_other().body)["title"] == "Payment failed"


def test_a_trigger_without_translations_stores_no_locale(build, db):
    app = build()
    client = app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, locale="de")
    trigger(client, [user_id], type="payment", event="payment_failed", translations={}, **OWN)
    run_jobs(app)
    assert inbox(client, user_id)[0]["title"] == OWN["title"]
    with db.cursor() as cur:
        cur.execute("SELECT locale FROM notifications WHERE user_id = %s", (user_id,))
        assert cur.fetchone()[0] is None


@pytest.mark.parametrize("translations, status, code, where", [
    ({"de!": {"title": "x"}}, 400, "invalid_locale", None),
    ({"xx": {"title": "x"}}, 400, "invalid_locale", None),          # well-formed, unknown to Babel (CLDR)
    ({"de-XX": {"title": "x"}}, 400, "invalid_locale", None),
    ({"de-at": {"title": "x"}, "de_AT": {"title": "y"}}, 400, "invalid_locale", None),   # one locale twice
    ({"de": {"title": "x" * 201}}, 422, "invalid_request", "title"),
    ({"de": {"content": "x" * 5001}}, 422, "invalid_request", "content"),
    ({"de": {"title": ""}}, 422, "invalid_request", "title"),
    ({"de": {"title": "<b></b>"}}, 422, "invalid_request", "title"),
    ({"de": {"subject": "x"}}, 422, "invalid_request", "subject"),
    ({"de": {}}, 422, "invalid_request", "_schema"),
    ({"de": {"link_text": "Ansehen"}}, 422, "invalid_request", "link_text"),   # the trigger has none
    ({"de": "Hallo"}, 422, "invalid_request", "_schema"),
    (["de"], 422, "invalid_request", None),
    ({f"de-{n:03d}": {"title": "x"} for n in range(51)}, 422, "invalid_request", None),
])
def test_bad_translations_are_refused_with_the_envelope(build, translations, status, code, where):
    client = build().test_client()
    response = post_trigger(client, [uuid.uuid4()], type="payment", event="payment_failed", title="t",
                            translations=translations)
    body = assert_error(response, status, code)
    if code == "invalid_locale":
        assert "translations" in body["message"]
    else:
        assert "translations" in body["errors"], body
        if where is not None:
            assert where in json.dumps(body["errors"]["translations"]), body


def test_the_openapi_document_shows_translations(build):
    spec = build().test_client().get("/openapi.json").get_json()
    trigger_schema = spec["components"]["schemas"]["Trigger"]["properties"]["translations"]
    assert trigger_schema["type"] == "object"
    assert "Translation" in json.dumps(spec["components"]["schemas"])


# ---------------------------------------------------------------- amounts per locale

AMOUNT_TEMPLATES = {"default": {"email_subject": "{title}: {total}", "email_text": "{content}\nTotal: {total}\n",
                                "sms": "{title}: {total}"}}


@pytest.fixture
def amounts_app(build):
    return build(templates=AMOUNT_TEMPLATES)


@pytest.mark.parametrize("locale, written, language", [
    ("de", "1.234,56\xa0€", "de"),
    ("en", "€1,234.56", "en"),
    ("de-AT", "€\xa01.234,56", "de"),      # Austria writes the sign first; the text is the de catalogue's
    (None, "€1,234.56", "en"),
])
def test_an_amount_is_written_the_way_the_contacts_locale_writes_it(amounts_app, smtp, twilio, locale, written,
                                                                      language):
    client = amounts_app.test_client()
    user_id = uuid.uuid4()
    put_contact(client, user_id, email="kunde@example.org", phone="+4915112345678", locale=locale)
    trigger(client, [user_id], type="payment", event="payment_failed", title="Payment", content="Card 4242",
            amounts={"total": {"amount": "1234.56", "currency": "EUR"}})
    run_jobs(amounts_app)
    [received] = smtp.messages
    message = received["message"]
    # a subject is one line of single spaces (the no-break space too); the body keeps it
    assert message["Subject"] == f"Payment: {written}".replace("\xa0", " ") and message["Content-Language"] == language
    assert f"Total: {written}" in message.get_body(preferencelist=("plain",)).get_content()
    assert twilio.messages[0]["Body"] == f"Payment: {written}"
    # the amount is a template variable only: the notification itself is unchanged
    assert set(inbox(client, user_id)[0]) == {"id", "customer_id", "type", "event", "title", "content", "link_url",
                                              "link_text", "rec_type", "rec_id", "read", "read_at", "created_at",
                                              "expires_at", "ack_required", "ack_deadline", "acked_at"}


def test_amounts_of_a_big_trigger_and_a_template_without_them(build, smtp):
    """Stored with every chunk's notifications; a template that names a missing amount renders it
    empty."""
    amounts_app = build(users_per_chunk=2, templates=AMOUNT_TEMPLATES)
    client = amounts_app.test_client()
    users = [uuid.uuid4() for _ in range(3)]   # users_per_chunk 2 below: stored chunk by chunk
    for n, user_id in enumerate(users):
        put_contact(client, user_id, email=f"u{n}@example.org", locale="de")
    trigger(client, users, type="payment", event="payment_failed", title="Zahlung",
            amounts={"total": {"amount": "5", "currency": "JPY"}})
    trigger(client, users[:1], type="payment", event="payment_failed", title="Ohne")
    run_jobs(amounts_app)
    subjects = sorted(m["message"]["Subject"] for m in smtp.messages)
    assert subjects == ["Ohne:"] + ["Zahlung: 5 ¥"] * 3


@pytest.mark.parametrize("amounts, where", [
    ({"total": {"amount": "12,50", "currency": "EUR"}}, "amount"),
    ({"total": {"amount": "NaN", "currency": "EUR"}}, "amount"),
    ({"total": {"amount": "1e20", "currency": "EUR"}}, "amount"),
    ({"total": {"amount": "0.0000001", "currency": "EUR"}}, "decimal places"),
    ({"total": {"amount": 1234.56, "currency": "EUR"}}, "amount"),     # a JSON number would lose digits
    ({"total": {"amount": "1", "currency": "EURO"}}, "currency"),
    ({"total": {"amount": "1", "currency": "eur"}}, "currency"),
    ({"total": {"amount": "1"}}, "currency"),
    ({"total": {"amount": "1", "currency": "EUR", "note": "x"}}, "note"),
    ({"title": {"amount": "1", "currency": "EUR"}}, "title"),          # a notification field
    ({"Total": {"amount": "1", "currency": "EUR"}}, "Total"),
    ({"total": "1234.56 EUR"}, "total"),
    ({f"a{n}": {"amount": "1", "currency": "EUR"} for n in range(21)}, "At most 20"),
])
def test_bad_amounts_are_refused_with_the_envelope(amounts_app, amounts, where):
    response = post_trigger(amounts_app.test_client(), [uuid.uuid4()], type="payment", event="payment_failed",
                            title="t", amounts=amounts)
    body = assert_error(response, 422, "invalid_request")
    assert where in json.dumps(body["errors"]["amounts"]), body


def test_the_direct_push_takes_no_amounts(amounts_app):
    response = push(amounts_app.test_client(), [uuid.uuid4()], type="payment", event="payment_failed", title="t",
                    amounts={"total": {"amount": "1", "currency": "EUR"}})
    assert_error(response, 422, "invalid_request")
