"""GET /v1/notifications/stats on a seeded data set whose answers are known."""
import datetime
import uuid

import pytest

from testkit.identity import make_token, SERVICE
from testkit.rows import insert_delivery, insert_notification

UTC = datetime.timezone.utc
START = datetime.datetime(2024, 3, 1, tzinfo=UTC)
END = datetime.datetime(2024, 3, 2, tzinfo=UTC)
A, B = uuid.uuid4(), uuid.uuid4()
WINDOW = {"from": "2024-03-01T00:00:00Z", "to": "2024-03-02T00:00:00Z"}
NO_LATENCY = {"p50": None, "p95": None, "p99": None}


def at(hours, seconds=0):
    return START + datetime.timedelta(hours=hours, seconds=seconds)


def delivery(db, notification, channel, status, after=None):
    """A delivery row; `after`: seconds from the notification's creation to sent_at."""
    sent_at = notification["created_at"] + datetime.timedelta(seconds=after) if after is not None else None
    insert_delivery(db, notification["id"], channel=channel, status=status, sent_at=sent_at)


@pytest.fixture
def seeded(db):
    """In the window: 4 chat notifications of customer A (3 read after 60/120/300 s, one unread) and one
    task notification of customer B (read after 30 s). Outside it: one just before, one exactly at `to`."""
    user = uuid.uuid4()
    made = {}
    for name, created, read_after, extra in (
            ("n1", at(1), 60, {}), ("n2", at(2), 120, {}),
            ("n3", at(3), 300, {"deleted_at": at(5)}),          # deleted later: still created and read
            ("n4", at(4), None, {}),
            ("n5", at(5), 30, {"customer_id": B, "type": "task", "event": "task_assigned"})):
        fields = {"customer_id": A, "created_at": created, **extra}
        if read_after is not None:
            fields["read_at"] = created + datetime.timedelta(seconds=read_after)
        made[name] = insert_notification(db, user, **fields)
    made["before"] = insert_notification(db, user, customer_id=A, created_at=START - datetime.timedelta(seconds=1),
                                         read_at=START + datetime.timedelta(seconds=9))
    made["at_end"] = insert_notification(db, user, customer_id=A, created_at=END, read_at=END)
    # the in-app deliveries are the in_app notifications themselves (app/deliveries/in_app.py)
    delivery(db, made["n1"], "email", "sent", after=10)
    delivery(db, made["n2"], "email", "sent", after=20)
    delivery(db, made["n3"], "email", "failed")
    delivery(db, made["n4"], "email", "skipped")
    delivery(db, made["n5"], "email", "pending")
    delivery(db, made["n1"], "sms", "sent", after=100)
    delivery(db, made["n2"], "sms", "sent", after=200)
    delivery(db, made["n5"], "sms", "sending")
    delivery(db, made["n4"], "sms", "sent", after=300)
    delivery(db, made["before"], "email", "sent", after=1000)    # outside the window
    delivery(db, made["at_end"], "email", "failed")
    return made


def stats(client, **query):
    r = client.get("/v1/notifications/stats", headers=SERVICE, query_string=dict(WINDOW, **query))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_whole_window(client, seeded):
    assert stats(client) == {
        "created": 5,
        "read": 4,
        "read_rate": 0.8,
        "median_seconds_to_read": 90.0,                 # of 30, 60, 120, 300
        "deliveries": {
            "system": {"sent": 5, "failed": 0, "skipped": 0, "pending": 0},
            "email": {"sent": 2, "failed": 1, "skipped": 1, "pending": 1},
            "sms": {"sent": 3, "failed": 0, "skipped": 0, "pending": 1},
        },
        "delivery_latency_seconds": {
            "system": {"p50": 0.0, "p95": 0.0, "p99": 0.0},
            "email": {"p50": 15.0, "p95": 19.5, "p99": 19.9},      # of 10 and 20, interpolated
            "sms": {"p50": 200.0, "p95": 290.0, "p99": 298.0},     # of 100, 200, 300
        },
        "acknowledgements": {},                                       # no notice needing one
    }


def test_in_app_deliveries_are_the_notifications_in_the_inbox(client, seeded, db):
    """The in-app channel is `sent` for every notification kept in the inbox (deleted ones too: they
    were delivered); one hidden because the user switched the channel off is `skipped`, not sent."""
    hidden = insert_notification(db, uuid.uuid4(), customer_id=A, created_at=at(6), in_app=False)
    delivery(db, hidden, "system", "skipped")
    assert stats(client)["deliveries"]["system"] == {"sent": 5, "failed": 0, "skipped": 1, "pending": 0}
    assert stats(client)["created"] == 6


def test_group_filter_takes_aliases(client, seeded):
    body = stats(client, group="chats")
    assert (body["created"], body["read"], body["read_rate"], body["median_seconds_to_read"]) == (4, 3, 0.75, 120.0)
    assert body["deliveries"]["email"] == {"sent": 2, "failed": 1, "skipped": 1, "pending": 0}
    assert body["delivery_latency_seconds"]["sms"] == {"p50": 200.0, "p95": 290.0, "p99": 298.0}


def test_customer_and_event_filters(client, seeded):
    body = stats(client, customer_id=str(B))
    assert (body["created"], body["read"], body["median_seconds_to_read"]) == (1, 1, 30.0)
    assert body["deliveries"]["sms"] == {"sent": 0, "failed": 0, "skipped": 0, "pending": 1}
    assert body["delivery_latency_seconds"]["sms"] == NO_LATENCY
    body = stats(client, event="message_received")
    assert (body["created"], body["read"]) == (4, 3)
    body = stats(client, group="task", event="task_assigned", customer_id=str(B))
    assert (body["created"], body["read_rate"]) == (1, 1.0)


def test_from_is_inclusive_and_to_exclusive(client, seeded):
    body = stats(client, **{"from": "2024-02-29T23:59:59Z", "to": "2024-03-01T01:00:00.000001Z"})
    assert (body["created"], body["read"], body["median_seconds_to_read"]) == (2, 2, 35.0)   # `before` and n1


def test_offsets_are_honoured(client, seeded):
    # 02:00+02:00 is midnight UTC: the same window
    body = stats(client, **{"from": "2024-03-01T02:00:00+02:00", "to": "2024-03-02T02:00:00+02:00"})
    assert body["created"] == 5


def test_empty_window(client, seeded):
    body = stats(client, **{"from": "2023-01-01T00:00:00Z", "to": "2023-01-02T00:00:00Z"})
    assert body == {"created": 0, "read": 0, "read_rate": 0.0, "median_seconds_to_read": None,
                    "deliveries": {c: {"sent": 0, "failed": 0, "skipped": 0, "pending": 0}
                                   for c in ("system", "email", "sms")},
                    "delivery_latency_seconds": {c: NO_LATENCY for c in ("system", "email", "sms")},
                    "acknowledgements": {}}


def test_a_full_leap_year_is_allowed(client, seeded):
    body = stats(client, **{"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:00Z"})   # 366 days
    assert body["created"] == 7


@pytest.mark.parametrize("query, field", [
    ({"from": None}, "from"),
    ({"to": None}, "to"),
    ({"to": "2024-03-01T00:00:00Z"}, "to"),                                          # to == from
    ({"to": "2024-02-01T00:00:00Z"}, "to"),                                          # to before from
    ({"from": "2024-01-01T00:00:00Z", "to": "2025-01-01T00:00:01Z"}, "to"),          # over 366 days
    ({"from": "2024-03-01T00:00:00"}, "from"),                                       # no offset
    ({"from": "last week"}, "from"),
    ({"customer_id": "nope"}, "customer_id"),
    ({"channel": "email"}, "channel"),                                               # unknown parameter
])
def test_bad_queries_are_422(client, query, field):
    params = dict(WINDOW, **query)
    params = {k: v for k, v in params.items() if v is not None}
    r = client.get("/v1/notifications/stats", headers=SERVICE, query_string=params)
    assert r.status_code == 422
    body = r.get_json()
    assert body["code"] == "notifications_m.invalid_request"
    assert field in body["errors"]


@pytest.mark.parametrize("query, code", [
    ({"group": "fax"}, "notifications_m.invalid_group"),
    ({"event": "nope"}, "notifications_m.invalid_event"),
    ({"group": "chat", "event": "task_due"}, "notifications_m.invalid_event"),
])
def test_unknown_group_or_event_is_400(client, query, code):
    r = client.get("/v1/notifications/stats", headers=SERVICE, query_string=dict(WINDOW, **query))
    assert r.status_code == 400
    assert r.get_json()["code"] == code


def test_needs_an_api_key(client):
    assert client.get("/v1/notifications/stats", query_string=WINDOW).status_code == 401
    user = {"Authorization": f"Bearer {make_token()}"}
    r = client.get("/v1/notifications/stats", headers=user, query_string=WINDOW)
    assert r.status_code == 401
    assert r.get_json()["code"] == "notifications_m.invalid_api_key"


def test_listed_in_openapi(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert "/v1/notifications/stats" in paths
    assert {"/v1/notifications/read-all", "/v1/notifications/unread-count", "/v1/notifications/audit"} <= set(paths)
