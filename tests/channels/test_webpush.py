"""Web Push end to end over real HTTPS: the browser's subscription stored through the API, a
trigger, the RQ worker, and a local push service that checks the VAPID JWT and decrypts the
payload with the subscription's private key (testkit/webpush.py)."""
import datetime
import logging

import pytest

from app.config import load_settings
from app.errors import ConfigError
from app.webpush.keys import check_settings, new_pair
from testkit.api import assert_error, deliveries, json_of, put_contact, trigger
from testkit.identity import bearer
from testkit.jobs import drain, fast_forward, run_jobs
from testkit.webpush import PushService

SUBSCRIPTIONS = "/v1/notifications/webpush/subscriptions"
PUBLIC, PRIVATE = new_pair()
VAPID = {"VAPID_PUBLIC_KEY": PUBLIC, "VAPID_PRIVATE_KEY": PRIVATE, "VAPID_SUBJECT": "mailto:ops@bank.example"}


@pytest.fixture
def pushes(tmp_path):
    service = PushService(tmp_path)
    yield service
    service.stop()


@pytest.fixture
def build(channel_app, pushes):
    """An app with payment.payment_failed on system + webpush, reaching the local push service."""
    def make(vapid=VAPID, **settings):
        return channel_app({"webpush": {"enabled": True}}, {"payment": {"payment_failed": ["system", "webpush"]}},
                           backoff=(1, 1), **dict(vapid, **pushes.settings(), **settings))
    return make


def subscribe(client, headers, subscription):
    return client.post(SUBSCRIPTIONS, json=subscription, headers=headers)


def send(client, user_id, **fields):
    trigger(client, [user_id], type="payment", event="payment_failed",
            **dict({"title": "Payment failed", "content": "Card ending 4242 was declined"}, **fields))


def test_a_push_reaches_the_browser_signed_and_encrypted(build, pushes, user):
    user_id, headers = user
    app = build()
    client = app.test_client()
    assert json_of(client.get("/v1/notifications/webpush/key", headers=headers)) == {"public_key": PUBLIC}
    browser = pushes.subscribe()
    created = subscribe(client, headers, browser.subscription)
    assert created.status_code == 201, created.get_json()
    assert json_of(created)["endpoint"] == browser.endpoint and json_of(created)["id"]

    send(client, user_id, link_url="/payments/42")
    run_jobs(app)

    assert pushes.refusals == []
    [message] = pushes.received(browser)
    inbox = json_of(client.get("/v1/notifications", headers=headers))["items"][0]
    assert {k: message[k] for k in inbox} == inbox        # the public JSON, as the inbox shows it
    assert message["title"] == "Payment failed" and message["content"] == "Card ending 4242 was declined"
    assert message["_vapid_key"] == PUBLIC                # signed with the configured key
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == "sent" and push["provider_message_id"].startswith("https://push.test.example/")


def test_the_push_carries_the_text_of_the_contacts_locale(build, pushes, user):
    """A trigger's translations reach the browser as the inbox shows them (issue 23)."""
    user_id, headers = user
    app = build()
    client = app.test_client()
    put_contact(client, user_id, locale="de-AT")
    browser = pushes.subscribe()
    assert subscribe(client, headers, browser.subscription).status_code == 201
    send(client, user_id, translations={"de": {"title": "Zahlung fehlgeschlagen"}})
    run_jobs(app)
    [message] = pushes.received(browser)
    assert message["title"] == "Zahlung fehlgeschlagen" and message["content"] == "Card ending 4242 was declined"


@pytest.mark.parametrize("change, field", [
    ({"endpoint": "http://push.example.com/x"}, "endpoint"),
    ({"endpoint": "https://127.0.0.1/x"}, "endpoint"),
    ({"endpoint": "https://[::1]/x"}, "endpoint"),
    ({"endpoint": "https://localhost/x"}, "endpoint"),
    ({"endpoint": "https://push.localhost/x"}, "endpoint"),
    ({"endpoint": "https://intranet/x"}, "endpoint"),
    ({"endpoint": "https://user:pw@push.example.com/x"}, "endpoint"),
    ({"endpoint": "https://push.example.com:99999/x"}, "endpoint"),
    ({"endpoint": "https://" + "a" * 2100 + ".com/"}, "endpoint"),
    ({"keys": {"p256dh": "not-a-key", "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys"),
    ({"keys": {"p256dh": "BA" + "A" * 85, "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys"),   # not on the curve
    ({"keys": {"p256dh": None, "auth": "AAAAAAAAAAAAAAAAAAAAAA"}}, "keys"),
    ({"keys": {"auth": "AAAA"}}, "keys"),
    ({"expirationTime": "soon"}, "expirationTime"),
    ({"extra": 1}, "extra"),
])
def test_a_malformed_subscription_is_refused_naming_the_field(build, pushes, user, change, field):
    _, headers = user
    client = build().test_client()
    body = dict(pushes.subscribe().subscription, **change)
    if "keys" in change and "p256dh" not in change["keys"]:
        body["keys"] = change["keys"]
    response = subscribe(client, headers, body)
    assert field in assert_error(response, 422, "invalid_request")["errors"]


def test_a_body_that_is_not_json_is_a_400(build, user):
    _, headers = user
    response = build().test_client().post(SUBSCRIPTIONS, data="{", headers=dict(headers, **{
        "Content-Type": "application/json"}))
    assert_error(response, 400, "invalid_json")


def test_at_most_ten_subscriptions_and_the_same_endpoint_replaces_its_row(build, pushes, user):
    _, headers = user
    client = build().test_client()
    browsers = [pushes.subscribe() for _ in range(10)]
    ids = [json_of(subscribe(client, headers, b.subscription))["id"] for b in browsers]
    again = subscribe(client, headers, dict(browsers[0].subscription, keys=pushes.subscribe().subscription["keys"]))
    assert again.status_code == 201 and json_of(again)["id"] == ids[0]     # same endpoint, new keys
    assert_error(subscribe(client, headers, pushes.subscribe().subscription), 409, "too_many_subscriptions")
    assert len(json_of(client.get(SUBSCRIPTIONS, headers=headers))) == 10


def test_delete_answers_404_for_another_users_subscription(build, pushes, user):
    _, headers = user
    client = build().test_client()
    sid = json_of(subscribe(client, headers, pushes.subscribe().subscription))["id"]
    other = bearer("7b0e6a4c-8a1d-4c3e-9e45-0f1e2d3c4b5a")
    assert_error(client.delete(f"{SUBSCRIPTIONS}/{sid}", headers=other), 404, "not_found")
    assert_error(client.delete(f"{SUBSCRIPTIONS}/not-an-id", headers=headers), 400, "invalid_id")
    assert client.delete(f"{SUBSCRIPTIONS}/{sid}", headers=headers).status_code == 204
    assert_error(client.delete(f"{SUBSCRIPTIONS}/{sid}", headers=headers), 404, "not_found")
    assert json_of(client.get(SUBSCRIPTIONS, headers=headers)) == []


def test_without_vapid_keys_the_endpoints_answer_503_and_startup_says_so_once(build, pushes, user, caplog):
    user_id, headers = user
    with caplog.at_level(logging.WARNING, logger="app.webpush"):
        app = build(vapid={})
    assert [r.getMessage() for r in caplog.records if r.name == "app.webpush"][0].startswith("web push is off")
    assert len([r for r in caplog.records if r.name == "app.webpush"]) == 1
    client = app.test_client()
    assert_error(subscribe(client, headers, pushes.subscribe().subscription), 503, "webpush_not_configured")
    assert_error(client.get("/v1/notifications/webpush/key", headers=headers), 503, "webpush_not_configured")
    send(client, user_id)
    run_jobs(app)
    assert deliveries(client, headers)["webpush"]["status"] == "skipped"


def test_gone_subscriptions_are_deleted_and_a_busy_push_service_is_retried(build, pushes, user, db):
    user_id, headers = user
    app = build()
    client = app.test_client()
    gone, busy = pushes.subscribe(), pushes.subscribe()
    pushes.answer(gone, 410)
    pushes.answer(busy, 503, 429)
    for browser in (gone, busy):
        subscribe(client, headers, browser.subscription)
    send(client, user_id)
    drain(app)

    assert [b["endpoint"] for b in json_of(client.get(SUBSCRIPTIONS, headers=headers))] == [busy.endpoint]
    assert len(pushes.received(busy)) == 1 and pushes.received(gone) == []
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == "sent" and push["attempts"] == 3
    with db.cursor() as cur:
        cur.execute("SELECT change FROM audit_log WHERE action = 'webpush.expire'")
        assert [row[0]["status"] for row in cur.fetchall()] == [410]


def test_only_gone_subscriptions_fail_the_delivery_without_retrying(build, pushes, user):
    user_id, headers = user
    app = build()
    client = app.test_client()
    browser = pushes.subscribe()
    pushes.answer(browser, 404)
    subscribe(client, headers, browser.subscription)
    send(client, user_id)
    run_jobs(app)
    assert fast_forward(app) == 0
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == "failed" and push["last_error"].startswith("invalid_recipient 404")
    assert json_of(client.get(SUBSCRIPTIONS, headers=headers)) == []


def test_the_sender_refuses_a_push_service_at_a_private_address(build, pushes, user, db):
    """A host name that resolves to loopback (here: `localhost`, stored behind the API's back, as if
    DNS had changed after the subscription) is never connected to, even with a live server there."""
    user_id, headers = user
    app = build()
    client = app.test_client()
    browser = pushes.subscribe()
    sid = json_of(subscribe(client, headers, browser.subscription))["id"]
    with db.cursor() as cur:
        cur.execute("UPDATE webpush_subscriptions SET endpoint = replace(endpoint, 'push.test.example', 'localhost')"
                    " WHERE id = %s", (sid,))
    send(client, user_id)
    run_jobs(app)
    assert pushes.received(browser) == [] and pushes.refusals == []
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == "pending" and push["last_error"].startswith("connection_failed")
    assert "non-public address" in push["last_error"]


def quiet_window():
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"quiet_hours": {"start": (now - datetime.timedelta(hours=1)).strftime("%H:%M"),
                            "end": (now + datetime.timedelta(hours=2)).strftime("%H:%M"), "channels": ["webpush"]}}


@pytest.mark.parametrize("preferences, status, reason", [
    (quiet_window(), "pending", "held by quiet hours until "),
    ({"changes": [{"group": "payment", "channel": "webpush", "enabled": False}]}, "skipped", "switched off"),
])
def test_preferences_and_quiet_hours_apply(build, pushes, user, preferences, status, reason):
    user_id, headers = user
    app = build()
    client = app.test_client()
    browser = pushes.subscribe()
    subscribe(client, headers, browser.subscription)
    answer = client.put("/v1/notifications/preferences", headers=headers, json=preferences)
    assert answer.status_code == 200, answer.get_json()
    send(client, user_id)
    run_jobs(app)
    assert pushes.received(browser) == []
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == status and push["reason"].startswith(reason)


def test_no_subscription_skips_the_delivery(build, user):
    user_id, headers = user
    app = build()
    client = app.test_client()
    send(client, user_id)
    run_jobs(app)
    push = deliveries(client, headers)["webpush"]
    assert push["status"] == "skipped" and "no push subscription" in push["reason"]


@pytest.mark.parametrize("settings, name", [
    ({"VAPID_PUBLIC_KEY": PUBLIC}, "VAPID_PRIVATE_KEY"),
    (dict(VAPID, VAPID_PRIVATE_KEY="short"), "VAPID_PRIVATE_KEY"),
    (dict(VAPID, VAPID_PUBLIC_KEY=new_pair()[0]), "VAPID_PUBLIC_KEY"),
    (dict(VAPID, VAPID_SUBJECT="ops@bank.example"), "VAPID_SUBJECT"),
    ({"WEBPUSH_RESOLVE": "push.example.com"}, "WEBPUSH_RESOLVE"),
])
def test_bad_webpush_settings_stop_startup(clean, settings, name):
    with pytest.raises(ConfigError) as raised:
        load_settings(dict(clean, **settings))
    assert raised.value.key == name


def test_the_resolve_override_is_for_development_only():
    with pytest.raises(ConfigError) as raised:
        check_settings({"WEBPUSH_RESOLVE": ["push.example.com=127.0.0.1"], "DEVELOPMENT": False})
    assert raised.value.key == "WEBPUSH_RESOLVE"


def test_flask_webpush_keys_prints_a_usable_pair(make_app, clean):
    result = make_app().test_cli_runner().invoke(args=["webpush", "keys"])
    lines = dict(line.split("=", 1) for line in result.output.split())
    assert set(lines) == {"VAPID_PUBLIC_KEY", "VAPID_PRIVATE_KEY"}
    assert load_settings(dict(clean, VAPID_SUBJECT="https://bank.example/contact", **lines))["VAPID_PUBLIC_KEY"]


def test_every_answer_forbids_caching(build, pushes, user):
    """The no-store rule of every personal answer (tests/service/test_http_edge.py), for these endpoints."""
    _, headers = user
    client = build().test_client()
    created = subscribe(client, headers, pushes.subscribe().subscription)
    answers = [created, client.get("/v1/notifications/webpush/key", headers=headers),
               client.get(SUBSCRIPTIONS, headers=headers),
               client.delete(f"{SUBSCRIPTIONS}/{json_of(created)['id']}", headers=headers)]
    for response in answers:
        assert 200 <= response.status_code < 300
        assert response.headers.get("Cache-Control") == "no-store" and response.headers.get("Pragma") == "no-cache"
