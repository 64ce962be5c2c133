"""The write path end to end: trigger → 202 → RQ worker → stored, published, inbox.

Real PostgreSQL, Redis and RQ: jobs run in-process with an RQ SimpleWorker in
burst mode inside the app context, exactly as `python -m workers` runs them.
"""
import contextlib
import functools
import json
import time
import uuid

from app.bus.codec import decode, message_key, user_channel
from testkit import api
from testkit.api import assert_envelope, post_trigger, trigger_body
from testkit.config_files import queue_yaml
from testkit.identity import API_KEY, bearer, make_token, OTHER_API_KEY, SERVICE
from testkit.jobs import run_jobs
from testkit.rows import rows, scalar

# SPEC "Trigger body", exactly as written there.
SPEC_EXAMPLE = {"type": "chats", "event": "message_received", "title": "Test Notification",
                "content": "This is a test notification", "customer_id": "550e8400-e29b-41d4-a716-446655440000",
                "user_ids": ["123e4567-e89b-12d3-a456-426614174000"], "rec_type": "chats",
                "rec_id": "789e4567-e89b-12d3-a456-426614174000"}


# ---------------------------------------------------------------- helpers

body_for = functools.partial(trigger_body, title="New Message", content="Hello from John")


@contextlib.contextmanager
def listening(app, user_id):
    """Subscribed to the user's stream channel; yields next_message(): the next message published
    there, decoded, or None after 5 s."""
    pubsub = app.extensions["redis"].pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(user_channel(app.config["REDIS_PREFIX"], user_id))

    def next_message():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                return decode(message_key(app.config["SECRET_KEY"]), message["channel"], message["data"])
        return None
    try:
        yield next_message
    finally:
        pubsub.close()


# ---------------------------------------------------------------- trigger → stored → inbox


def test_trigger_accepted_then_stored_once_per_user_and_in_each_inbox(app, client, db):
    users = [uuid.uuid4() for _ in range(3)]
    r = post_trigger(client, body=body_for(users, link_url="/chat/room/456", link_text="View Message",
                                 rec_type="chats", rec_id="789e4567-e89b-12d3-a456-426614174000"))
    assert r.status_code == 202, r.get_data(as_text=True)
    accepted = r.get_json()
    assert isinstance(accepted["message"], str) and accepted["message"]
    assert accepted["users"] == 3
    trigger_id = uuid.UUID(accepted["trigger_id"])
    assert accepted["status_url"] == f"/v1/notifications/triggers/{trigger_id}"

    # accepted, not yet stored: the worker stores
    assert scalar(db, "SELECT count(*) FROM notifications") == 0
    assert scalar(db, "SELECT status FROM triggers WHERE id = %s", trigger_id) == "pending"

    run_jobs(app)

    stored = rows(db, "SELECT * FROM notifications WHERE trigger_id = %s", trigger_id)
    assert sorted(r["user_id"] for r in stored) == sorted(users)
    for user_id in users:
        inbox = client.get("/v1/notifications", headers=bearer(user_id))
        assert inbox.status_code == 200
        body = inbox.get_json()
        assert body["total"] == 1 and body["unread"] == 1
        item = body["items"][0]
        assert item["type"] == "chat" and item["event"] == "message_received"
        assert item["title"] == "New Message" and item["content"] == "Hello from John"
        assert item["link_url"] == "/chat/room/456" and item["link_text"] == "View Message"
        assert item["rec_type"] == "chats" and item["rec_id"] == "789e4567-e89b-12d3-a456-426614174000"
        assert item["customer_id"] is None and item["read"] is False
        assert item["id"] in {str(r["id"]) for r in stored if r["user_id"] == user_id}


def test_spec_example_body_succeeds_and_stores_canonical_type(app, client, db):
    r = client.post("/v1/notifications/trigger", data=json.dumps(SPEC_EXAMPLE),
                    headers=dict(SERVICE, **{"Content-Type": "application/json"}))
    assert r.status_code == 202, r.get_data(as_text=True)
    run_jobs(app)
    user_id = uuid.UUID(SPEC_EXAMPLE["user_ids"][0])
    item = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"][0]
    assert item["type"] == "chat"          # `chats` is an alias; the canonical name is stored
    assert item["event"] == "message_received"
    assert item["title"] == "Test Notification" and item["content"] == "This is a test notification"
    assert item["customer_id"] == SPEC_EXAMPLE["customer_id"]
    assert item["rec_type"] == "chats" and item["rec_id"] == SPEC_EXAMPLE["rec_id"]
    assert scalar(db, "SELECT type FROM notifications") == "chat"


def test_markup_is_stripped_when_accepted(app, client, db):
    user_id = uuid.uuid4()
    r = post_trigger(client, body=body_for([user_id], title="<script>alert(1)</script>Hi",
                                 content="<b>bold</b> & a < b", link_text="<i>Open</i>"))
    assert r.status_code == 202, r.get_data(as_text=True)
    run_jobs(app)
    item = client.get("/v1/notifications", headers=bearer(user_id)).get_json()["items"][0]
    assert item["title"] == "Hi"
    assert item["content"] == "bold & a < b"       # other characters kept as written
    assert item["link_text"] == "Open"
    stored = rows(db, "SELECT title, content FROM notifications")[0]
    assert "<script>" not in stored["title"] and "alert" not in stored["title"]


def test_stored_notification_is_published_to_the_users_stream_channel(app, client):
    user_id = uuid.uuid4()
    with listening(app, user_id) as next_message:
        assert post_trigger(client, body=body_for([user_id])).status_code == 202
        run_jobs(app)
        published = next_message()
    assert published is not None, "nothing published to the user's channel"
    assert published.kind == "n" and published.seq > 0 and published.customer == ""
    assert json.loads(published.body)["title"] == "New Message"


def test_trigger_status_pending_then_dispatched(app, client):
    users = [uuid.uuid4() for _ in range(4)]
    accepted = post_trigger(client, body=body_for(users)).get_json()
    url = accepted["status_url"]

    r = client.get(url, headers=SERVICE)
    assert r.status_code == 200
    status = r.get_json()
    assert status["trigger_id"] == accepted["trigger_id"]
    assert status["status"] == "pending"
    assert status["users_total"] == 4 and status["users_done"] == 0
    assert status["dispatched_at"] is None and status["created_at"].endswith("Z")

    run_jobs(app)

    status = client.get(url, headers=SERVICE).get_json()
    assert status["status"] == "dispatched"
    assert status["users_total"] == 4 and status["users_done"] == 4
    assert status["dispatched_at"].endswith("Z") and status["dispatched_at"] >= status["created_at"]


def test_trigger_status_is_private_to_the_calling_api_key(client):
    url = post_trigger(client, body=body_for([uuid.uuid4()])).get_json()["status_url"]
    assert_envelope(client.get(url, headers={"X-API-Key": OTHER_API_KEY}), 404, "not_found")
    assert_envelope(client.get(url), 401, "invalid_api_key")
    assert_envelope(client.get(url, headers=bearer(uuid.uuid4())), 401, "invalid_api_key")
    assert_envelope(client.get(f"/v1/notifications/triggers/{uuid.uuid4()}", headers=SERVICE), 404, "not_found")
    assert_envelope(client.get("/v1/notifications/triggers/not-a-uuid", headers=SERVICE), 400, "invalid_id")
    assert client.get(url, headers={"X-API-Key": API_KEY}).status_code == 200


# ---------------------------------------------------------------- idempotency


def test_same_key_same_body_replays_the_first_answer_and_stores_once(app, client, db):
    user_id = uuid.uuid4()
    body = body_for([user_id], customer_id=str(uuid.uuid4()))
    headers = dict(SERVICE, **{"Idempotency-Key": "order-42"})
    first = post_trigger(client, body=body, headers=headers)
    assert first.status_code == 202
    # the same body with its keys in another order and other spacing
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = client.post("/v1/notifications/trigger", data=reordered,
                        headers=dict(headers, **{"Content-Type": "application/json"}))
    assert again.status_code == 202
    assert again.get_json() == first.get_json()
    run_jobs(app)
    third = post_trigger(client, body=body, headers=headers)            # also after the worker ran
    assert third.status_code == 202 and third.get_json() == first.get_json()
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM triggers") == 1
    assert scalar(db, "SELECT count(*) FROM notifications") == 1
    assert client.get("/v1/notifications", headers=bearer(user_id)).get_json()["total"] == 1


def test_same_key_other_body_is_refused(app, client, db):
    user_id = uuid.uuid4()
    headers = dict(SERVICE, **{"Idempotency-Key": "k-1"})
    assert post_trigger(client, body=body_for([user_id]), headers=headers).status_code == 202
    r = post_trigger(client, body=body_for([user_id], title="Another title"), headers=headers)
    body = assert_envelope(r, 409, "idempotency_key_reused")
    assert "trigger_id" not in body
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM triggers") == 1
    assert scalar(db, "SELECT title FROM notifications") == "New Message"


def test_same_key_from_another_api_key_is_independent(app, client, db):
    user_id = uuid.uuid4()
    first = post_trigger(client, body=body_for([user_id]), headers={"X-API-Key": API_KEY, "Idempotency-Key": "shared"})
    other = post_trigger(client, body=body_for([user_id], title="Other service"),
                         headers={"X-API-Key": OTHER_API_KEY, "Idempotency-Key": "shared"})
    assert first.status_code == 202 and other.status_code == 202
    assert first.get_json()["trigger_id"] != other.get_json()["trigger_id"]
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM triggers") == 2
    assert sorted(r["title"] for r in rows(db, "SELECT title FROM notifications")) == ["New Message",
                                                                                      "Other service"]


def test_expired_key_can_be_reused(app, client, db):
    user_id = uuid.uuid4()
    headers = dict(SERVICE, **{"Idempotency-Key": "daily-digest"})
    first = post_trigger(client, body=body_for([user_id]), headers=headers)
    assert first.status_code == 202
    with db.cursor() as cur:
        cur.execute("UPDATE triggers SET created_at = now() - interval '25 hours' WHERE idempotency_key = %s",
                    ("daily-digest",))
    # past the 24 h of queue.yaml: a different body is a new trigger, not a 409
    again = post_trigger(client, body=body_for([user_id], title="Next day"), headers=headers)
    assert again.status_code == 202, again.get_data(as_text=True)
    assert again.get_json()["trigger_id"] != first.get_json()["trigger_id"]
    # and the key now belongs to the new trigger
    replay = post_trigger(client, body=body_for([user_id], title="Next day"), headers=headers)
    assert replay.get_json() == again.get_json()
    assert_envelope(post_trigger(client, body=body_for([user_id]), headers=headers), 409, "idempotency_key_reused")
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM triggers WHERE idempotency_key = 'daily-digest'") == 1
    assert scalar(db, "SELECT count(*) FROM notifications WHERE title = 'Next day'") == 1


def test_oversized_idempotency_key_is_refused(client, db):
    r = post_trigger(client, body=body_for([uuid.uuid4()]), headers=dict(SERVICE, **{"Idempotency-Key": "k" * 201}))
    body = assert_envelope(r, 422, "invalid_request")
    assert "Idempotency-Key" in body["errors"]
    assert scalar(db, "SELECT count(*) FROM triggers") == 0


# ---------------------------------------------------------------- a job that runs twice


def test_drain_job_enqueued_twice_stores_once(app, client, db):
    from app.queues.enqueue import queue
    from app.queues.waker import wake_dispatcher
    users = [uuid.uuid4() for _ in range(5)]
    post_trigger(client, body=body_for(users))
    with app.app_context():
        assert wake_dispatcher() is None            # the accept already woke one: nothing more
        wake_dispatcher(force=True)
        wake_dispatcher(force=True)
    assert queue("dispatch", app).count == 3
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications") == 5
    assert scalar(db, "SELECT count(DISTINCT user_id) FROM notifications") == 5
    # message_received goes out on system and email: one email row per notification (the in-app
    # delivery is the stored notification itself, app/deliveries/in_app.py)
    assert scalar(db, "SELECT count(*) FROM deliveries") == 5
    assert scalar(db, "SELECT count(DISTINCT (notification_id, channel)) FROM deliveries WHERE channel = 'email'") == 5


def test_dispatch_function_called_twice_stores_once(app, client, db):
    """A small trigger is claimed while pending and marked dispatched in the transaction that stores
    it (app/dispatch/batch.py): a second drain finds nothing to store. (A run that dies before its
    commit stored nothing: tests/faults kill workers mid-drain.)"""
    from app.dispatch.drain import drain
    users = [uuid.uuid4() for _ in range(7)]
    post_trigger(client, body=body_for(users, type="payment", event="payment_failed"))
    with app.app_context():
        assert drain(app) == 1
        assert drain(app) == 0          # already dispatched: nothing to do
    stored = rows(db, "SELECT id, user_id FROM notifications")
    assert len(stored) == 7 and {r["user_id"] for r in stored} == set(users)
    deliveries = rows(db, "SELECT notification_id, channel, status FROM deliveries")
    # payment_failed: system, email, sms; the in-app one is the notification itself
    assert len(deliveries) == 14
    assert len({(d["notification_id"], d["channel"]) for d in deliveries}) == 14
    assert {d["channel"] for d in deliveries} == {"email", "sms"}
    user = {"Authorization": f"Bearer {make_token(users[0])}"}
    seen = api.deliveries(client, user)
    assert set(seen) == {"system", "email", "sms"} and seen["system"]["status"] == "sent"
    assert scalar(db, "SELECT status FROM triggers") == "dispatched"


def test_explicit_channels_limit_the_delivery_rows(app, client, db):
    users = [uuid.uuid4() for _ in range(2)]
    r = post_trigger(client, body=body_for(users, type="payment", event="payment_failed", channels=["system", "sms"]))
    assert r.status_code == 202
    run_jobs(app)
    assert sorted(r["channel"] for r in rows(db, "SELECT channel FROM deliveries")) == ["sms", "sms"]
    for user in users:   # email left out; the in-app delivery shows as the user reads it
        assert set(api.deliveries(client, {"Authorization": f"Bearer {make_token(user)}"})) == {"system",
                                                                                                          "sms"}


def test_external_deliveries_run_and_are_recorded(app, client, db):
    """The email job runs; a user with no address on file is skipped (never retried)."""
    user_id = uuid.uuid4()
    trigger_id = post_trigger(client, body=body_for([user_id])).get_json()["trigger_id"]
    run_jobs(app)
    email = rows(db, "SELECT d.status, d.attempts FROM deliveries d JOIN notifications n"
                     " ON n.id = d.notification_id WHERE n.trigger_id = %s AND d.channel = 'email'", trigger_id)
    assert len(email) == 1
    assert email[0]["status"] == "skipped"


# ---------------------------------------------------------------- large fan-out


def test_large_fanout_is_chunked_and_complete(make_app, db, tmp_path):
    app = make_app(QUEUE_CONFIG=queue_yaml(tmp_path, batch={"users_per_chunk": 100}))
    assert app.config["DOMAIN"].users_per_chunk == 100
    client = app.test_client()
    users = [uuid.uuid4() for _ in range(1000)]
    r = post_trigger(client, body=body_for(users))
    assert r.status_code == 202
    assert r.get_json()["users"] == 1000
    trigger_id = r.get_json()["trigger_id"]
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications WHERE trigger_id = %s", trigger_id) == 1000
    assert scalar(db, "SELECT count(DISTINCT user_id) FROM notifications") == 1000
    status = client.get(f"/v1/notifications/triggers/{trigger_id}", headers=SERVICE).get_json()
    assert status["status"] == "dispatched"
    assert status["users_total"] == 1000 and status["users_done"] == 1000
    assert scalar(db, "SELECT count(*) FROM deliveries WHERE channel = 'email'") == 1000   # in-app: the rows


def test_repeated_user_ids_are_stored_once(app, client, db):
    user_id = uuid.uuid4()
    r = post_trigger(client, body=body_for([user_id, user_id, str(user_id).upper()]))
    assert r.status_code == 202
    assert r.get_json()["users"] == 1
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications") == 1


# ---------------------------------------------------------------- direct push


def test_direct_push_answers_200_and_stores_nothing(app, client, db):
    user_id = uuid.uuid4()
    with listening(app, user_id) as next_message:
        r = client.post("/v1/notifications/sse", json=dict(SPEC_EXAMPLE, user_ids=[str(user_id)]),
                        headers=SERVICE)
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        assert isinstance(body["message"], str) and body["message"]
        assert body["users"] == 1
        published = next_message()
    assert published is not None
    assert published.kind == "d" and published.seq is None          # no cursor: not replayed
    assert json.loads(published.body)["type"] == "chat"
    run_jobs(app)
    assert scalar(db, "SELECT count(*) FROM notifications") == 0
    assert scalar(db, "SELECT count(*) FROM triggers") == 0
    assert scalar(db, "SELECT count(*) FROM deliveries") == 0
    assert client.get("/v1/notifications", headers=bearer(user_id)).get_json()["total"] == 0


def test_direct_push_spec_example_and_auth(client):
    r = client.post("/v1/notifications/sse", json=SPEC_EXAMPLE, headers=SERVICE)
    assert r.status_code == 200
    assert_envelope(client.post("/v1/notifications/sse", json=SPEC_EXAMPLE), 401, "invalid_api_key")
    assert_envelope(client.post("/v1/notifications/sse", json=dict(SPEC_EXAMPLE, type="nope"), headers=SERVICE),
                    400, "invalid_group")
