"""Cases tests/security/test_fuzz.py (schemathesis) found, kept as plain tests.

1. A time with an offset PostgreSQL refuses (beyond ±15:59, e.g. `-22:16`) reached SQL and
   answered 500 (`GET /audit?from=`, `GET /stats?from=`, `POST /read-all {"before"}`); a time
   that cannot be shifted to UTC inside the years 1..9999 was a 500 too. Now such times are
   loaded as UTC (app/api/schema.py `UtcDateTime`) and the impossible ones are a 422.
2. `GET`/`PUT /preferences` silently ignored an unknown query parameter, while the inbox and
   the unread count refuse one with a 422 (a misspelt `customer_id` would widen the answer).
3. A NUL character (U+0000), which no PostgreSQL text value can hold, reached SQL and answered
   500: `GET /audit?actor=a%00b` (and `action`, `target`) and an `Idempotency-Key` with a NUL.
   Every request schema (StrictSchema) now refuses a NUL anywhere in its input with a 422, and
   so does the trigger for its Idempotency-Key. (A trigger's text fields used to lose the NUL
   silently to the markup sanitiser; they are refused too now, like any character that cannot
   be kept as written.)
"""
import uuid

import pytest

from testkit.identity import make_token, SERVICE
from testkit.rows import fetch_row, insert_notification


def assert_invalid(response, field):
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == "notifications_m.invalid_request"
    assert field in body["errors"], body


# ---------------------------------------------------------------- 1. time offsets and range


FAR_OFFSET = "2024-01-01T00:00:00-22:16"        # valid RFC 3339, refused by PostgreSQL as written
SAME_INSTANT_UTC = "2024-01-01T22:16:00Z"
PAST_9999 = "9999-12-31T23:59:59-05:00"         # 10000-01-01 in UTC
BEFORE_YEAR_1 = "0001-01-01T00:00:00+05:00"     # year 0 in UTC


@pytest.mark.parametrize("query", [f"from={FAR_OFFSET}", f"to={FAR_OFFSET}"])
def test_audit_window_with_a_far_offset_is_answered(client, query):
    response = client.get(f"/v1/notifications/audit?{query.replace('+', '%2B')}", headers=SERVICE)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("value", [PAST_9999, BEFORE_YEAR_1.replace("+", "%2B")])
def test_audit_window_outside_the_calendar_is_422(client, value):
    assert_invalid(client.get(f"/v1/notifications/audit?from={value}", headers=SERVICE), "from")


def test_stats_window_with_a_far_offset_is_answered(client):
    response = client.get(f"/v1/notifications/stats?from={FAR_OFFSET}&to=2024-02-01T00:00:00Z", headers=SERVICE)
    assert response.status_code == 200, response.get_data(as_text=True)


@pytest.mark.parametrize("query", [f"from=2024-01-01T00:00:00Z&to={PAST_9999}",
                                   f"from={BEFORE_YEAR_1.replace('+', '%2B')}&to=2024-01-01T00:00:00Z"])
def test_stats_window_outside_the_calendar_is_422(client, query):
    response = client.get(f"/v1/notifications/stats?{query}", headers=SERVICE)
    assert response.status_code == 422, response.get_data(as_text=True)


def test_read_all_before_a_far_offset_means_the_same_instant(client, db, user):
    user_id, headers = user
    before = insert_notification(db, user_id, created_at="2024-01-01T22:15:59Z")
    after = insert_notification(db, user_id, created_at="2024-01-01T22:16:01Z")
    response = client.post("/v1/notifications/read-all", json={"before": FAR_OFFSET}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["updated"] == 1
    assert fetch_row(db, before["id"])["read_at"] is not None
    assert fetch_row(db, after["id"])["read_at"] is None


def test_far_offset_and_utc_select_the_same_notifications(client, db):
    user_id = uuid.uuid4()
    for minute in (14, 15, 17):
        insert_notification(db, user_id, created_at=f"2024-01-01T22:{minute}:00Z")
    results = []
    for value in (FAR_OFFSET, SAME_INSTANT_UTC):
        headers = {"Authorization": f"Bearer {make_token(user_id)}"}
        results.append(client.post("/v1/notifications/read-all", json={"before": value},
                                   headers=headers).get_json()["updated"])
        db.cursor().execute("UPDATE notifications SET read_at = NULL WHERE user_id = %s", (user_id,))
    assert results == [2, 2]


@pytest.mark.parametrize("value", [PAST_9999, BEFORE_YEAR_1])
def test_read_all_before_outside_the_calendar_is_422_and_changes_nothing(client, db, user, value):
    user_id, headers = user
    row = insert_notification(db, user_id)
    assert_invalid(client.post("/v1/notifications/read-all", json={"before": value}, headers=headers), "before")
    assert fetch_row(db, row["id"])["read_at"] is None


# ---------------------------------------------------------------- 2. unknown query parameters


@pytest.mark.parametrize("method,kwargs", [
    ("GET", {}),
    ("PUT", {"json": {"changes": [{"group": "chat", "enabled": True}]}}),
])
def test_preferences_refuse_an_unknown_query_parameter(client, db, user, method, kwargs):
    _, headers = user
    response = client.open("/v1/notifications/preferences?customer=550e8400-e29b-41d4-a716-446655440000",
                           method=method, headers=headers, **kwargs)
    assert_invalid(response, "customer")
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM preferences")
        assert cur.fetchone()[0] == 0


# ---------------------------------------------------------------- 3. NUL characters


@pytest.mark.parametrize("name", ["actor", "action", "target"])
def test_audit_filter_with_a_nul_is_422(client, name):
    assert_invalid(client.get(f"/v1/notifications/audit?{name}=a%00b", headers=SERVICE), name)


def test_idempotency_key_with_a_nul_is_422_and_accepts_nothing(client, db):
    body = {"type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(uuid.uuid4())]}
    response = client.post("/v1/notifications/trigger", json=body,
                           headers=dict(SERVICE, **{"Idempotency-Key": "a\x00b"}))
    assert_invalid(response, "Idempotency-Key")
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM triggers")
        assert cur.fetchone()[0] == 0


@pytest.mark.parametrize("method,path,body,field", [
    ("POST", "/v1/notifications/trigger", {"title": "a\x00b"}, "title"),
    ("POST", "/v1/notifications/sse", {"content": "a\x00b"}, "content"),
    ("POST", "/v1/notifications/trigger", {"channels": ["email\x00"]}, "channels"),
])
def test_trigger_text_with_a_nul_is_422(client, method, path, body, field):
    full = dict({"type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(uuid.uuid4())]}, **body)
    assert_invalid(client.open(path, method=method, json=full, headers=SERVICE), field)


def test_preference_change_with_a_nul_is_422(client, db, user):
    _, headers = user
    response = client.put("/v1/notifications/preferences", headers=headers,
                          json={"changes": [{"group": "chat", "event": "mess\x00age", "enabled": True}]})
    assert_invalid(response, "changes")


def test_text_without_a_nul_is_untouched_by_the_check(client):
    # a tab is text in content; in a one-line title it is a control character (docs/security/content.md)
    body = {"type": "chat", "event": "message_received", "title": "here \u00e9\u4e2d \U0001f600",
            "content": "tab\there \u00e9\u4e2d \U0001f600", "user_ids": [str(uuid.uuid4())]}
    assert client.post("/v1/notifications/trigger", json=body, headers=SERVICE).status_code == 202
