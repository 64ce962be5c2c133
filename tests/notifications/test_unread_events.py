"""Counts and read state pushed live to every device of a user.

The publish side is checked by subscribing to the user's Redis channel (what
every stream hub subscribes to); the whole path by two real SSE streams of one
user on a real gunicorn with a real RQ worker: one device marks read, the
other sees `read` and `unread` events.
"""
import json
import time
import uuid

import pytest
import redis as redis_lib
import requests

from app.config import DEV_SECRET_KEY
from app.bus.codec import decode, message_key, user_channel
from testkit.config_files import queue_config, shipped_groups
from testkit.identity import SERVICE, bearer, make_token
from testkit.jobs import run_jobs
from testkit.rows import insert_notification

CUSTOMER = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
KEY = message_key(DEV_SECRET_KEY)   # the tests run with DEVELOPMENT=true and no SECRET_KEY
GROUPS = dict.fromkeys(shipped_groups(), 0)


class Channel:
    """A subscriber on one user's channel, as a stream hub is."""

    def __init__(self, redis_url, user_id):
        self.client = redis_lib.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(user_channel("notif:", user_id))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:   # wait for Redis to confirm the subscription
            message = self.pubsub.get_message(timeout=0.1)
            if message and message["type"] == "subscribe":
                break

    def messages(self, settle=0.3):
        """Every message until none came for `settle` seconds: [(kind, name or seq, payload)]."""
        out = []
        while True:
            message = self.pubsub.get_message(timeout=settle)
            if message is None:
                return out
            if message["type"] != "message":
                continue
            published = decode(KEY, message["channel"], message["data"])
            out.append((published.kind, published.name or published.seq, json.loads(published.body)))

    def close(self):
        self.pubsub.close()
        self.client.close()


@pytest.fixture
def channel(clean):
    opened = []

    def subscribe(user_id):
        ch = Channel(clean["REDIS_URL"], user_id)
        opened.append(ch)
        return ch

    yield subscribe
    for ch in opened:
        ch.close()


def named(messages):
    return [(name, payload) for kind, name, payload in messages if kind == "e"]


def test_mark_read_publishes_read_then_unread(client, user, db, channel):
    user_id, headers = user
    first = insert_notification(db, user_id, customer_id=CUSTOMER)
    insert_notification(db, user_id, type="task", event="task_due")
    ch = channel(user_id)
    assert client.patch(f"/v1/notifications/{first['id']}/read", headers=headers).status_code == 200
    assert named(ch.messages()) == [
        ("read", {"ids": [str(first["id"])], "read": True}),
        ("unread", {"unread": 1, "by_customer": {"none": 1}, "by_group": dict(GROUPS, task=1), "ack_pending": 0}),
    ]


def test_mark_unread_publishes_read_false(client, user, db, channel):
    user_id, headers = user
    row = insert_notification(db, user_id, customer_id=CUSTOMER, read_at="2024-01-15T10:31:00Z")
    ch = channel(user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={"read": False})
    assert r.status_code == 200
    assert named(ch.messages()) == [
        ("read", {"ids": [str(row["id"])], "read": False}),
        ("unread", {"unread": 1, "by_customer": {str(CUSTOMER): 1}, "by_group": dict(GROUPS, chat=1), "ack_pending": 0}),
    ]


def test_delete_publishes_deleted_then_unread(client, user, db, channel):
    user_id, headers = user
    row = insert_notification(db, user_id)
    ch = channel(user_id)
    assert client.delete(f"/v1/notifications/{row['id']}", headers=headers).status_code == 204
    assert named(ch.messages()) == [
        ("deleted", {"ids": [str(row["id"])]}),
        ("unread", {"unread": 0, "by_customer": {}, "by_group": GROUPS, "ack_pending": 0}),
    ]


def test_read_all_publishes_all_then_unread(client, user, db, channel):
    user_id, headers = user
    chat = insert_notification(db, user_id, customer_id=CUSTOMER)
    insert_notification(db, user_id, customer_id=CUSTOMER, type="task", event="task_due")
    insert_notification(db, user_id)
    ch = channel(user_id)
    r = client.post("/v1/notifications/read-all", headers=headers,
                    json={"customer_id": str(CUSTOMER), "group": "chats"})
    assert r.get_json() == {"updated": 1}
    assert named(ch.messages()) == [
        ("read", {"all": True, "read": True, "customer_id": str(CUSTOMER), "group": "chat", "before": None,
                  "ids": [str(chat["id"])]}),
        ("unread", {"unread": 2, "by_customer": {str(CUSTOMER): 1, "none": 1},
                    "by_group": dict(GROUPS, chat=1, task=1), "ack_pending": 0}),
    ]
    # nothing left to mark: nothing changed, nothing published
    r = client.post("/v1/notifications/read-all", headers=headers,
                    json={"customer_id": str(CUSTOMER), "group": "chats"})
    assert r.get_json() == {"updated": 0}
    assert ch.messages() == []


def test_failed_change_publishes_nothing(client, user, channel):
    user_id, headers = user
    ch = channel(user_id)
    assert client.patch(f"/v1/notifications/{uuid.uuid4()}/read", headers=headers).status_code == 404
    assert client.delete(f"/v1/notifications/{uuid.uuid4()}", headers=headers).status_code == 404
    assert client.post("/v1/notifications/read-all", headers=headers, json={"group": "fax"}).status_code == 400
    assert ch.messages() == []


def test_another_users_change_is_not_published_to_me(client, user, db, channel):
    user_id, _ = user
    other = uuid.uuid4()
    row = insert_notification(db, other)
    ch = channel(user_id)
    other_headers = {"Authorization": f"Bearer {make_token(other)}"}
    assert client.patch(f"/v1/notifications/{row['id']}/read", headers=other_headers).status_code == 200
    assert ch.messages() == []


def test_dispatch_publishes_each_users_counts_after_the_notification(app, client, db, channel):
    alice, bob, hidden = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    insert_notification(db, alice, type="task", event="task_due")       # alice had one unread already
    hidden_headers = {"Authorization": f"Bearer {make_token(hidden)}"}
    assert client.put("/v1/notifications/preferences", headers=hidden_headers,
                      json={"changes": [{"group": "chat", "channel": "system", "enabled": False}]}).status_code == 200
    channels = {uid: channel(uid) for uid in (alice, bob, hidden)}
    r = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "chats", "event": "message_received", "title": "Hi", "customer_id": str(CUSTOMER),
        "user_ids": [str(alice), str(bob), str(hidden)]})
    assert r.status_code == 202
    run_jobs(app)
    got = {uid: ch.messages() for uid, ch in channels.items()}
    for uid, expected in ((alice, {"unread": 2, "by_customer": {str(CUSTOMER): 1, "none": 1},
                                   "by_group": dict(GROUPS, chat=1, task=1), "ack_pending": 0}),
                          (bob, {"unread": 1, "by_customer": {str(CUSTOMER): 1},
                                 "by_group": dict(GROUPS, chat=1), "ack_pending": 0})):
        kinds = [(kind, name) for kind, name, _ in got[uid]]
        assert kinds[0][0] == "n" and kinds[1:] == [("e", "unread")], kinds   # the notification first, then counts
        assert got[uid][1][2] == expected
    # a user who switched the in-app channel off gets neither the notification nor counts
    assert got[hidden] == []


def test_dispatch_counts_the_online_users_of_a_chunk_in_one_query(app, client, db, channel, monkeypatch):
    """A chunk costs one count query and one publish for the users with a stream open (the others
    could not hear it; a stream that opens later counts for itself), whatever the chunk's size."""
    from app.notifications import events
    calls = []
    original = events.unread_counts_many
    monkeypatch.setattr(events, "unread_counts_many", lambda conn, ids, domain: calls.append(sorted(map(str, ids))) or
                        original(conn, ids, domain))
    users = [uuid.uuid4() for _ in range(25)]
    online = {uid: channel(uid) for uid in users[3:6]}
    r = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "task", "event": "task_due", "title": "Due", "user_ids": [str(u) for u in users]})
    assert r.status_code == 202
    run_jobs(app)
    assert calls == [sorted(str(u) for u in users[3:6])]
    for ch in online.values():
        assert named(ch.messages()) == [("unread", {"unread": 1, "by_customer": {"none": 1},
                                                    "by_group": dict(GROUPS, task=1), "ack_pending": 0})]
    # nobody online: no count query at all
    calls.clear()
    for ch in online.values():
        ch.close()
    r = client.post("/v1/notifications/trigger", headers=SERVICE, json={
        "type": "task", "event": "task_due", "title": "Again", "user_ids": [str(u) for u in users]})
    run_jobs(app)
    assert calls == []
    assert client.get("/v1/notifications/unread-count", headers={
        "Authorization": f"Bearer {make_token(users[0])}"}).get_json()["unread"] == 2


def test_redis_down_does_not_fail_the_change(client, user, db, redis_proc):
    """The change committed; the counts go out with the next change or reconnect."""
    user_id, headers = user
    row = insert_notification(db, user_id)
    redis_proc.stop()
    try:
        r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers)
    finally:
        redis_proc.start()
    assert r.status_code == 200
    assert r.get_json()["read"] is True


# ------------------------------------------------------------------------------------ real streams

@pytest.fixture
def services(processes, base_env, tmp_path):
    worker = processes.start_worker(base_env, queue_config=queue_config(tmp_path))
    web = processes.start_web(base_env, workers=1, keepalive=1)
    return web, worker


def every(stream, count, timeout=15.0):
    """The first `count` events of any kind (notifications and named ones), once they arrived."""
    stream.wait_for(lambda st: len(st.all_events) >= count, timeout, f"{count} event(s)")
    return stream.snapshot(everything=True)[:count]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_second_device_sees_read_and_counts_live(services, clean, db):
    web, _ = services
    user_id = uuid.uuid4()
    old = insert_notification(db, user_id, customer_id=CUSTOMER)
    phone = web.stream(headers=bearer(user_id))
    laptop = web.stream(headers=bearer(user_id))
    try:
        for stream in (phone, laptop):
            first = every(stream, 1)[0]   # right after connecting: the current counts
            assert (first.event, first.id) == ("unread", None)
            assert first.json() == {"unread": 1, "by_customer": {str(CUSTOMER): 1}, "by_group": dict(GROUPS, chat=1), "ack_pending": 0}
        # a new notification through the queue: both devices get it, then the new counts
        r = web.post("/v1/notifications/trigger", headers=SERVICE, json={
            "type": "task", "event": "task_due", "title": "Due", "user_ids": [str(user_id)]})
        assert r.status_code == 202
        for stream in (phone, laptop):
            events = every(stream, 3, timeout=20)
            assert events[1].event is None and events[1].id is not None and events[1].json()["title"] == "Due"
            assert (events[2].event, events[2].json()["unread"]) == ("unread", 2)
        new_id = every(laptop, 3)[1].json()["id"]
        # the laptop marks the old one read: the phone sees which one, and the new counts
        r = requests.patch(f"{web.url}/v1/notifications/{old['id']}/read", headers=bearer(user_id), timeout=10)
        assert r.status_code == 200
        events = every(phone, 5)
        assert (events[3].event, events[3].json()) == ("read", {"ids": [str(old["id"])], "read": True})
        assert (events[4].event, events[4].json()) == (
            "unread", {"unread": 1, "by_customer": {"none": 1}, "by_group": dict(GROUPS, task=1), "ack_pending": 0})
        # read-all on the phone: the laptop learns everything is read
        r = web.post("/v1/notifications/read-all", headers=bearer(user_id), json={})
        assert r.json() == {"updated": 1}
        events = every(laptop, 7)
        assert (events[5].event, events[5].json()) == (
            "read", {"all": True, "read": True, "customer_id": None, "group": None, "before": None,
                     "ids": [new_id]})
        assert (events[6].event, events[6].json()) == ("unread", {"unread": 0, "by_customer": {},
                                                                  "by_group": GROUPS, "ack_pending": 0})
        # a delete on one device removes it on the other
        assert web.delete(f"/v1/notifications/{new_id}", headers=bearer(user_id)).status_code == 204
        events = every(phone, 9)
        assert (events[7].event, events[7].json()) == ("deleted", {"ids": [new_id]})
        assert events[8].event == "unread"
        # a device reconnecting from before the deleted one: no replay of it, then the counts as they are now
        again = web.stream(headers=dict(bearer(user_id), **{"Last-Event-ID": str(old["seq"])}))
        try:
            first = every(again, 1)[0]
            assert (first.event, first.json()["unread"]) == ("unread", 0)
        finally:
            again.close()
    finally:
        phone.close()
        laptop.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_customer_scoped_stream_counts_only_its_customers(services, clean, db):
    web, _ = services
    user_id, other_customer = uuid.uuid4(), uuid.uuid4()
    insert_notification(db, user_id, customer_id=CUSTOMER)
    insert_notification(db, user_id, customer_id=other_customer)
    scoped = web.stream(headers={"Authorization": f"Bearer {make_token(user_id, customers=[CUSTOMER])}"})
    everything = web.stream(headers=bearer(user_id))
    try:
        assert every(scoped, 1)[0].json() == {"unread": 1, "by_customer": {str(CUSTOMER): 1},
                                              "by_group": dict(GROUPS, chat=1), "ack_pending": 0}
        assert every(everything, 1)[0].json()["unread"] == 2
        # a new notification for the other customer: the scoped stream neither sees it nor its count
        r = web.post("/v1/notifications/trigger", headers=SERVICE, json={
            "type": "chat", "event": "message_received", "title": "Other", "user_ids": [str(user_id)],
            "customer_id": str(other_customer)})
        assert r.status_code == 202
        events = every(everything, 3, timeout=20)
        assert (events[2].event, events[2].json()["unread"]) == ("unread", 3)
        scoped_events = every(scoped, 2, timeout=20)
        assert scoped_events[1].event == "unread"
        assert scoped_events[1].json() == {"unread": 1, "by_customer": {str(CUSTOMER): 1},
                                           "by_group": dict(GROUPS, chat=1), "ack_pending": 0}
        assert [e for e in scoped.snapshot(everything=True) if e.event is None] == []
    finally:
        scoped.close()
        everything.close()
