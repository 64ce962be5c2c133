"""Callbacks to the triggering service (issue 21): signed `ack` and `ack_overdue` events posted to a
trigger's `callback_url` (configured hosts only), retried like deliveries. The receiver is a real
HTTP server (testkit FakeHTTP); the callback pass runs as the worker's thread runs it."""
import datetime
import hashlib
import hmac
import json
import uuid

import pytest
import requests

from testkit.api import assert_envelope, post_trigger, trigger
from testkit.identity import bearer
from testkit.jobs import run_jobs
from testkit.rows import scalar

SECRET = "callback-secret-for-the-tests-0123456789"
TERMS = {"type": "security", "event": "terms_updated", "title": "Our terms changed"}


@pytest.fixture
def hook_app(make_app, endpoint):
    return make_app(ACK_CALLBACK_HOSTS="127.0.0.1", ACK_CALLBACK_SECRET=SECRET)


def callbacks_pass(app):
    from app import db
    from app.acks.callbacks import run_due
    with app.app_context(), db.connection() as conn:
        return run_due(app, conn, requests.Session())


def verified(request):
    """The JSON body, once its signature checks out as a receiver would check it."""
    fields = dict(part.split("=", 1) for part in request.headers["X-Notifications-Signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    return json.loads(request.body)


def test_ack_and_overdue_events_reach_the_service_signed(hook_app, endpoint, db):
    client = hook_app.test_client()
    acking, late = uuid.uuid4(), uuid.uuid4()
    accepted = trigger(client, [acking, late], **TERMS, callback_url=endpoint.url + "/hooks/ack")
    run_jobs(hook_app)
    assert callbacks_pass(hook_app) == 0                   # nothing due yet: the overdue ones wait for the deadline
    nid = client.get("/v1/notifications", headers=bearer(acking)).get_json()["items"][0]["id"]
    assert client.post(f"/v1/notifications/{nid}/ack", headers=bearer(acking)).status_code == 200
    with db.cursor() as cur:                               # the other one's deadline passes
        cur.execute("UPDATE ack_callbacks SET next_at = now() WHERE event = 'ack_overdue' AND status = 'pending'")
    assert callbacks_pass(hook_app) == 2
    events = sorted((verified(r) for r in endpoint.requests), key=lambda e: e["event"])
    assert [(e["event"], e["user_id"], e["trigger_id"]) for e in events] == [
        ("ack", str(acking), accepted["trigger_id"]), ("ack_overdue", str(late), accepted["trigger_id"])]
    assert events[0]["acked_at"] and events[1]["acked_at"] is None
    assert {r.path for r in endpoint.requests} == {"/hooks/ack"}
    assert {r.headers["Idempotency-Key"] for r in endpoint.requests} == {e["id"] for e in events}
    assert scalar(db, "SELECT array_agg(DISTINCT status) FROM ack_callbacks WHERE event = 'ack_overdue'") \
        == ["cancelled", "sent"]                            # the acknowledged one's overdue event never went
    assert callbacks_pass(hook_app) == 0


def test_a_failed_callback_is_retried_with_the_delivery_back_off(hook_app, endpoint, db):
    client = hook_app.test_client()
    user_id = uuid.uuid4()
    trigger(client, [user_id], **TERMS, callback_url=endpoint.url + "/hook")
    run_jobs(hook_app)
    endpoint.fail(503)
    nid = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"][0]["id"]
    client.post(f"/v1/notifications/{nid}/ack", headers=bearer(user_id))
    assert callbacks_pass(hook_app) == 1
    row = scalar(db, "SELECT row_to_json(c) FROM ack_callbacks c WHERE event = 'ack'")
    assert row["status"] == "pending" and row["attempts"] == 1 and row["last_error"] == "answered 503"
    next_at = datetime.datetime.fromisoformat(row["next_at"])
    assert next_at > datetime.datetime.now(datetime.timezone.utc)        # queue.yaml's first back-off
    with db.cursor() as cur:
        cur.execute("UPDATE ack_callbacks SET next_at = now()")
    assert callbacks_pass(hook_app) == 1
    assert scalar(db, "SELECT status FROM ack_callbacks WHERE event = 'ack'") == "sent"
    assert len(endpoint.requests) == 2 and len({r.headers["Idempotency-Key"] for r in endpoint.requests}) == 1


@pytest.mark.parametrize("url", ["https://evil.example/hook", "ftp://127.0.0.1/hook", "http://user:pw@127.0.0.1/x",
                                 "not a url"])
def test_a_callback_url_outside_the_configured_hosts_is_a_422(hook_app, url):
    response = post_trigger(hook_app.test_client(), **TERMS, callback_url=url)
    assert_envelope(response, 422, "invalid_request")
    assert "callback_url" in response.get_json()["errors"]


def test_callbacks_need_configured_hosts_and_a_notice(client, hook_app, endpoint):
    assert_envelope(post_trigger(client, **TERMS, callback_url=endpoint.url + "/hook"), 422, "invalid_request")
    response = post_trigger(hook_app.test_client(), type="task", event="task_due", title="Plain",
                            callback_url=endpoint.url + "/hook")
    assert_envelope(response, 422, "invalid_request")


def test_a_short_secret_stops_start_up(make_app):
    from app.errors import ConfigError
    with pytest.raises(ConfigError, match="ACK_CALLBACK_SECRET"):
        make_app(ACK_CALLBACK_HOSTS="hooks.bank.example", ACK_CALLBACK_SECRET="short")
