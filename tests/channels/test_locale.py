"""Messages in the contact's language, end to end (trigger -> RQ worker -> a real SMTP server and a
Twilio-shaped server): template translations picked by the fallback chain de-AT → de → default,
the service's own strings from the Babel catalogues, dates in the contact's zone as the locale
writes them, and the email's Content-Language."""
import datetime
import re
import subprocess
import zoneinfo

import pytest
from babel import dates

from app import i18n
from devtools.services import REPO_ROOT
from testkit.api import put_contact, trigger
from testkit.jobs import run_jobs
from tests.deliveries.test_digest import digest_config, window_passes

TEMPLATES = {
    "default": {"email_subject": "{title}", "sms": "{title}: {content}",
                "translations": {"de": {"email_subject": "Hinweis: {title}", "sms": "Hinweis: {title}"},
                                 "fr": {"email_subject": "Avis : {title}"}}},
    "payment.payment_failed": {"translations": {"fr": {"sms": "Paiement refusé : {title}"}}},
}


@pytest.fixture
def build(channel_app, smtp, twilio):
    def make(templates=TEMPLATES, events=None, **extra):
        channels = {"email": {"enabled": True},
                    "sms": {"type": "twilio", "base_url": twilio.url, "account_sid": twilio.account_sid,
                            "auth_token": twilio.auth_token, "from": twilio.sender, "timeout": 5}}
        return channel_app(channels, events or {"payment": {"payment_failed": ["system", "email", "sms"]}},
                           templates=templates, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5",
                           **extra)
    return make


def send(app, user_id, locale, **contact):
    client = app.test_client()
    put_contact(client, user_id, email="kunde@example.org", phone="+4915112345678", locale=locale, **contact)
    trigger(client, [user_id], type="payment", event="payment_failed", title="Karte abgelehnt",
            content="Karte 4242", link_url="/payments/1")
    run_jobs(app)


@pytest.mark.parametrize("locale, subject, language, footer, link", [
    ("de-AT", "Hinweis: Karte abgelehnt", "de", "Sie erhalten diese Nachricht", "Öffnen: "),
    ("fr-CA", "Avis : Karte abgelehnt", "fr", "Vous recevez ce message", "Ouvrir: "),
    ("pt-BR", "Karte abgelehnt", "en", "You receive this because", "Open: "),
    (None, "Karte abgelehnt", "en", "You receive this because", "Open: "),
])
def test_the_email_is_written_in_the_contacts_language(build, smtp, user, locale, subject, language, footer, link):
    user_id, _ = user
    send(build(), user_id, locale)
    [received] = smtp.messages
    message = received["message"]
    assert message["Subject"] == subject
    assert message["Content-Language"] == language
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    assert footer in html and link in text


def test_sms_takes_the_most_specific_translation(build, twilio, user):
    user_id, _ = user
    send(build(), user_id, "fr")
    assert twilio.messages[0]["Body"] == "Paiement refusé : Karte abgelehnt"   # the event's fr beats default's


def test_a_digest_counts_and_dates_in_the_contacts_language_and_zone(make_app, smtp, user, db, tmp_path):
    user_id, _ = user
    app = make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5",
                   **digest_config(tmp_path, {"window": "PT1H", "channels": ["email"]}))
    client = app.test_client()
    put_contact(client, user_id, email="kunde@example.org", locale="de-AT", timezone="Asia/Tokyo")
    for title in ("Erste", "Zweite"):
        trigger(client, [user_id], type="chat", event="message_digest", title=title, content="x")
    run_jobs(app)
    window_passes(app, db)
    [received] = smtp.messages
    assert received["message"]["Subject"] == "Sie haben 2 neue Benachrichtigungen"
    assert received["message"]["Content-Language"] == "de"
    with db.cursor() as cur:
        cur.execute("SELECT created_at FROM notifications WHERE title = 'Erste'")
        created = cur.fetchone()[0]
    local = dates.format_datetime(created, "short", tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"), locale="de_AT")
    assert f"- Erste ({local})" in received["message"].get_body(preferencelist=("plain",)).get_content()


def test_fallback_chain_and_formats():
    assert i18n.chain("de-AT") == ["de-AT", "de", "en"] and i18n.chain(None) == ["en"]
    assert i18n.chain("zh-Hant-TW") == ["zh-Hant-TW", "zh-Hant", "zh", "en"]
    assert i18n.used("de-CH") == "de" and i18n.used("pt-BR") == "en" and i18n.used("pt-BR", {"pt"}) == "pt"
    assert i18n.format_amount(1234.56, "EUR", "de") == "1.234,56\xa0€"
    assert i18n.format_amount(1234.56, "EUR", "en") == "€1,234.56"
    moment = datetime.datetime(2026, 12, 7, 15, 0, tzinfo=datetime.timezone.utc)
    assert i18n.format_datetime(moment, "de-AT", "Europe/Vienna") == "07.12.2026, 16:00:00"
    assert i18n.format_datetime(moment, "fr", "Nowhere/Unknown", "short") == "07/12/2026 15:00"


def test_the_catalogues_hold_every_string_the_code_marks(tmp_path):
    """`pybabel extract` (as docs/channels.md says) finds no string the shipped catalogues lack."""
    pot = tmp_path / "messages.pot"
    subprocess.run([str(REPO_ROOT / ".venv/bin/pybabel"), "--quiet", "extract", "-F", "babel.cfg", "-k", "gettext:2",
                    "-k", "ngettext:2,3", "-o", str(pot), "app"], cwd=REPO_ROOT, check=True)
    marked = set(re.findall(r'^msgid "(.+)"$', pot.read_text(), re.M))
    assert "Open your inbox" in marked
    for language in ("de", "fr"):
        po = (REPO_ROOT / f"app/i18n/translations/{language}/LC_MESSAGES/messages.po").read_text()
        for msgid in marked:
            assert f'msgid "{msgid}"' in po
        assert all(i18n.gettext(language, m) != m for m in marked if "%" not in m), language
