"""The consent ledger over HTTP: every contact and preference change is a versioned record with its
actor and consent text version, and a `requires_consent` group's email goes only to an address whose
consent is on record (trigger -> RQ worker -> a real SMTP server)."""
import uuid

import pytest

from testkit.api import assert_error, deliveries, json_of, notification_id, put_contact, trigger
from testkit.identity import SERVICE
from testkit.jobs import run_jobs

PREFS = "/v1/notifications/preferences"


@pytest.fixture
def mail_app(make_app, smtp):
    """The shipped notifications.yaml (its `marketing` group requires consent), email to the fake server."""
    return make_app(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port), MAIL_TIMEOUT="5")


def key_id(app):
    """The test key's id, as audit rows and the ledger name it (never the key)."""
    from app.security.api_keys import digest
    return app.config["API_KEY_TABLE"][digest(SERVICE["X-API-Key"])].name


def set_marketing_email(client, headers, enabled, **extra):
    return client.put(PREFS, headers=headers, json={
        "changes": [{"group": "marketing", "channel": "email", "enabled": enabled}], **extra})


def send_offer(app, client, user_id, headers):
    """Trigger a marketing offer, run its jobs; its email delivery as the user reads it."""
    trigger(client, [user_id], type="marketing", event="offer", title="A better rate")
    run_jobs(app)
    return deliveries(client, headers, notification_id(client, headers))["email"]


def test_marketing_email_needs_consent_on_record_for_the_address(mail_app, smtp, user):
    user_id, headers = user
    client = mail_app.test_client()
    address = f"m-{user_id.hex[:8]}@example.org"
    put_contact(client, user_id, email=address, consent_text_version="contact-form-3")

    # no consent yet: not sent, and the delivery says why
    email = send_offer(mail_app, client, user_id, headers)
    assert email["status"] == "skipped" and email["reason"].startswith("no_consent"), email
    assert smtp.messages == []
    evidence = json_of(client.get(f"/v1/notifications/{notification_id(client, headers)}/evidence", headers=SERVICE))
    assert evidence["consent"]["required"] is True
    decided = next(d for d in evidence["deliveries"] if d["channel"] == "email")["resolution_at_dispatch"]
    assert decided == {"enabled": True, "locked": False, "source": "default", "consent": False}

    # consent must name the text the user was shown
    assert_error(set_marketing_email(client, headers, True), 422, "consent_text_version_required")
    assert set_marketing_email(client, headers, True, consent_text_version="marketing-2026-11").status_code == 200
    email = send_offer(mail_app, client, user_id, headers)
    assert email["status"] == "sent", email
    assert [m["rcpt_tos"] for m in smtp.messages] == [[address]]

    # withdrawn: not sent again
    assert set_marketing_email(client, headers, False).status_code == 200
    email = send_offer(mail_app, client, user_id, headers)
    assert email["status"] == "skipped", email
    assert len(smtp.messages) == 1

    # groups that do not require consent send as before
    trigger(client, [user_id], type="chat", event="message_received", title="Hi")
    run_jobs(mail_app)
    assert len(smtp.messages) == 2


def test_consent_is_for_the_address_it_was_given_for(mail_app, smtp, user):
    user_id, headers = user
    client = mail_app.test_client()
    put_contact(client, user_id, email=f"old-{user_id.hex[:8]}@example.org")
    assert set_marketing_email(client, headers, True, consent_text_version="marketing-2026-11").status_code == 200
    put_contact(client, user_id, email=f"new-{user_id.hex[:8]}@example.org")   # the service changes the address

    email = send_offer(mail_app, client, user_id, headers)
    assert email["status"] == "skipped" and email["reason"].startswith("no_consent"), email
    assert smtp.messages == []


def test_history_shows_each_change_with_its_actor_and_consent_text(mail_app, user):
    user_id, headers = user
    client = mail_app.test_client()
    address = f"h-{user_id.hex[:8]}@example.org"
    put_contact(client, user_id, email=address, locale="en-GB", consent_text_version="contact-form-3")
    assert set_marketing_email(client, headers, True, consent_text_version="marketing-2026-11").status_code == 200
    assert client.put(PREFS, headers=headers, json={
        "changes": [{"group": "chat", "enabled": False}],
        "quiet_hours": {"start": "22:00", "end": "07:00"}}).status_code == 200
    assert set_marketing_email(client, headers, False).status_code == 200

    own = client.get(PREFS + "/history", headers=headers)
    assert own.status_code == 200, own.get_data(as_text=True)
    items = json_of(own)["items"]
    assert [i["version"] for i in items] == [5, 4, 3, 2, 1]
    withdrawn, quiet, chat, granted, contact = items
    assert (contact["source"], contact["actor_type"], contact["actor_id"]) == ("contact", "service", key_id(mail_app))
    assert contact["channel"] == "email" and contact["consent_text_version"] == "contact-form-3"
    assert contact["change"]["email"]["old"] is None and contact["change"]["email"]["new"] == contact["address_hash"]
    assert contact["change"]["other_fields"] == ["locale"]
    assert address not in own.get_data(as_text=True)          # the address itself is never kept
    assert (granted["actor_type"], granted["actor_id"]) == ("user", str(user_id))
    assert (granted["group"], granted["channel"], granted["granted"]) == ("marketing", "email", True)
    assert granted["consent_text_version"] == "marketing-2026-11"
    assert granted["address_hash"] == contact["address_hash"]
    assert granted["change"] == {"enabled": {"old": None, "new": True}}
    assert (chat["group"], chat["channel"], chat["granted"]) == ("chat", None, None)
    assert quiet["source"] == "quiet_hours" and quiet["change"]["quiet_hours"]["new"]["start"] == "22:00"
    assert (withdrawn["granted"], withdrawn["change"]) == (False, {"enabled": {"old": True, "new": False}})
    assert all(i["request_id"] for i in items)

    # paged
    first = json_of(client.get(PREFS + "/history?limit=2", headers=headers))
    assert [i["version"] for i in first["items"]] == [5, 4] and first["has_more"]
    rest = json_of(client.get(f"{PREFS}/history?limit=10&before={first['next_before']}", headers=headers))
    assert [i["version"] for i in rest["items"]] == [3, 2, 1] and not rest["has_more"]

    # the same under the service API (audit scope); a user token or a bad id is refused
    service = client.get(f"/v1/notifications/users/{user_id}/preferences/history", headers=SERVICE)
    assert service.status_code == 200 and json_of(service)["items"] == items
    assert_error(client.get(f"/v1/notifications/users/{user_id}/preferences/history", headers=headers),
                 401, "invalid_api_key")
    assert_error(client.get("/v1/notifications/users/nope/preferences/history", headers=SERVICE), 400, "invalid_id")
    assert_error(client.get(PREFS + "/history?limit=0", headers=headers), 422, "invalid_request")


def test_the_delivery_job_checks_consent_again_before_sending(mail_app, smtp, user):
    """Consent on record at dispatch, the address changed before the job ran: not sent to the new one."""
    user_id, headers = user
    client = mail_app.test_client()
    put_contact(client, user_id, email=f"old-{user_id.hex[:8]}@example.org")
    assert set_marketing_email(client, headers, True, consent_text_version="marketing-2026-11").status_code == 200
    trigger(client, [user_id], type="marketing", event="offer", title="A better rate")
    run_jobs(mail_app, ["dispatch"])
    assert deliveries(client, headers)["email"]["status"] == "pending"
    put_contact(client, user_id, email=f"new-{user_id.hex[:8]}@example.org")
    run_jobs(mail_app)

    email = deliveries(client, headers)["email"]
    assert email["status"] == "skipped" and email["reason"].startswith("no_consent"), email
    assert smtp.messages == []


def test_consent_given_for_one_customer_covers_that_customer_only(mail_app, smtp, user):
    user_id, headers = user
    client = mail_app.test_client()
    mine, other = uuid.uuid4(), uuid.uuid4()
    put_contact(client, user_id, email=f"c-{user_id.hex[:8]}@example.org")
    given = client.put(PREFS, headers=headers, json={"consent_text_version": "marketing-2026-11", "changes": [
        {"group": "marketing", "channel": "email", "customer_id": str(mine), "enabled": True}]})
    assert given.status_code == 200, given.get_data(as_text=True)
    for customer in (mine, other):
        trigger(client, [user_id], type="marketing", event="offer", title=f"For {customer}", customer_id=str(customer))
    run_jobs(mail_app)

    assert [m["message"]["Subject"] for m in smtp.messages] == [f"For {mine}"]
