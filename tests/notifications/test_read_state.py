"""Read state across the inbox: POST /read-all with each filter, GET /unread-count after every kind of change."""
import datetime
import uuid

import pytest

from testkit.config_files import shipped_groups
from testkit.identity import make_token, SERVICE
from testkit.jobs import run_jobs
from testkit.rows import insert_notification

CUSTOMER = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
OTHER = uuid.UUID("660e8400-e29b-41d4-a716-446655440000")
GROUPS = dict.fromkeys(shipped_groups(), 0)


def counts(client, headers, query=""):
    r = client.get("/v1/notifications/unread-count" + query, headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def read_all(client, headers, body=None):
    if body is None:
        return client.post("/v1/notifications/read-all", headers=headers)
    return client.post("/v1/notifications/read-all", headers=headers, json=body)


def unread_ids(client, headers):
    body = client.get("/v1/notifications?status=unread&limit=200", headers=headers).get_json()
    return {item["id"] for item in body["items"]}


@pytest.fixture
def inbox(db, user):
    """A mixed inbox: chat/task, two customers and none, one read, one deleted, one hidden; another user's."""
    user_id, headers = user
    rows = {
        "chat_a": insert_notification(db, user_id, customer_id=CUSTOMER),
        "chat_a2": insert_notification(db, user_id, customer_id=CUSTOMER),
        "task_a": insert_notification(db, user_id, customer_id=CUSTOMER, type="task", event="task_due"),
        "chat_b": insert_notification(db, user_id, customer_id=OTHER),
        "task_none": insert_notification(db, user_id, type="task", event="task_due"),
        "read": insert_notification(db, user_id, read_at=datetime.datetime.now(datetime.timezone.utc)),
        "deleted": insert_notification(db, user_id, deleted_at=datetime.datetime.now(datetime.timezone.utc)),
        "hidden": insert_notification(db, user_id, in_app=False),
        "theirs": insert_notification(db, uuid.uuid4(), customer_id=CUSTOMER),
    }
    return user_id, headers, {k: str(v["id"]) for k, v in rows.items()}, rows


def test_unread_count_totals_by_customer_and_group(client, inbox):
    _, headers, _, _ = inbox
    assert counts(client, headers) == {
        "unread": 5,
        "by_customer": {str(CUSTOMER): 3, str(OTHER): 1, "none": 1},
        "by_group": dict(GROUPS, chat=3, task=2),
        "ack_pending": 0,
    }


def test_unread_count_for_one_customer(client, inbox):
    _, headers, _, _ = inbox
    assert counts(client, headers, f"?customer_id={CUSTOMER}") == {
        "unread": 3, "by_customer": {str(CUSTOMER): 3}, "by_group": dict(GROUPS, chat=2, task=1), "ack_pending": 0}


def test_unread_count_honours_the_customers_claim(client, inbox):
    user_id, _, _, _ = inbox
    limited = {"Authorization": f"Bearer {make_token(user_id, customers=[CUSTOMER])}"}
    # all "my" customers = the listed one plus notifications of no customer
    assert counts(client, limited) == {"unread": 4, "by_customer": {str(CUSTOMER): 3, "none": 1},
                                       "by_group": dict(GROUPS, chat=2, task=2), "ack_pending": 0}
    r = client.get(f"/v1/notifications/unread-count?customer_id={OTHER}", headers=limited)
    assert r.status_code == 403
    assert r.get_json()["code"] == "notifications_m.invalid_customer_id"


def test_unread_count_rejects_unknown_parameters_and_anonymous(client, user):
    _, headers = user
    r = client.get("/v1/notifications/unread-count?status=unread", headers=headers)
    assert r.status_code == 422
    assert r.get_json()["code"] == "notifications_m.invalid_request"
    assert client.get("/v1/notifications/unread-count").status_code == 401
    assert client.get("/v1/notifications/unread-count", headers=SERVICE).status_code == 401


def test_empty_inbox_counts_zero(client, user):
    _, headers = user
    assert counts(client, headers) == {"unread": 0, "by_customer": {}, "by_group": GROUPS, "ack_pending": 0}


def test_read_all_without_body_marks_the_whole_inbox(client, inbox, db):
    user_id, headers, ids, rows = inbox
    r = read_all(client, headers)
    assert r.status_code == 200
    assert r.get_json() == {"updated": 5}
    assert counts(client, headers) == {"unread": 0, "by_customer": {}, "by_group": GROUPS, "ack_pending": 0}
    assert unread_ids(client, headers) == set()
    # the earlier read time is kept; other users, deleted and hidden ones are untouched
    body = client.get(f"/v1/notifications/{ids['read']}", headers=headers).get_json()
    assert body["read_at"].startswith(rows["read"]["read_at"].strftime("%Y-%m-%dT%H:%M:%S"))
    with db.cursor() as cur:
        cur.execute("SELECT id, read_at IS NOT NULL FROM notifications WHERE id = ANY(%s::uuid[])",
                    ([ids["theirs"], ids["deleted"], ids["hidden"]],))
        assert {str(i): read for i, read in cur.fetchall()} == {ids["theirs"]: False, ids["deleted"]: False,
                                                                 ids["hidden"]: False}


def test_read_all_empty_json_body_is_the_same(client, inbox):
    _, headers, _, _ = inbox
    assert read_all(client, headers, {}).get_json() == {"updated": 5}
    assert read_all(client, headers, {}).get_json() == {"updated": 0}


def test_read_all_for_one_customer(client, inbox):
    _, headers, ids, _ = inbox
    assert read_all(client, headers, {"customer_id": str(CUSTOMER)}).get_json() == {"updated": 3}
    assert unread_ids(client, headers) == {ids["chat_b"], ids["task_none"]}
    assert counts(client, headers) == {"unread": 2, "by_customer": {str(OTHER): 1, "none": 1},
                                       "by_group": dict(GROUPS, chat=1, task=1), "ack_pending": 0}


def test_read_all_for_one_group_by_alias(client, inbox):
    _, headers, ids, _ = inbox
    assert read_all(client, headers, {"group": "tasks"}).get_json() == {"updated": 2}
    assert unread_ids(client, headers) == {ids["chat_a"], ids["chat_a2"], ids["chat_b"]}
    assert counts(client, headers)["by_group"] == dict(GROUPS, chat=3)


def test_read_all_customer_and_group_together(client, inbox):
    _, headers, ids, _ = inbox
    assert read_all(client, headers, {"customer_id": str(CUSTOMER), "group": "chat"}).get_json() == {"updated": 2}
    assert unread_ids(client, headers) == {ids["task_a"], ids["chat_b"], ids["task_none"]}


def test_read_all_before_includes_the_notification_shown_at_that_time(client, inbox):
    _, headers, ids, _ = inbox
    shown = client.get(f"/v1/notifications/{ids['task_a']}", headers=headers).get_json()
    # the client passes back the created_at it was shown (millisecond precision): that one is included
    assert read_all(client, headers, {"before": shown["created_at"]}).get_json() == {"updated": 3}
    assert unread_ids(client, headers) == {ids["chat_b"], ids["task_none"]}


def test_read_all_before_with_an_offset(client, inbox):
    _, headers, ids, rows = inbox
    moment = rows["chat_a2"]["created_at"].astimezone(datetime.timezone(datetime.timedelta(hours=2)))
    assert read_all(client, headers, {"before": moment.isoformat()}).get_json() == {"updated": 2}
    assert unread_ids(client, headers) == {ids["task_a"], ids["chat_b"], ids["task_none"]}


def test_read_all_with_a_claim_marks_only_the_claimed_customers(client, inbox):
    user_id, headers, ids, _ = inbox
    limited = {"Authorization": f"Bearer {make_token(user_id, customers=[CUSTOMER])}"}
    assert read_all(client, limited).get_json() == {"updated": 4}
    assert unread_ids(client, headers) == {ids["chat_b"]}


@pytest.mark.parametrize("body, status, code", [
    ({"group": "fax"}, 400, "notifications_m.invalid_group"),
    ({"customer_id": "not-a-uuid"}, 422, "notifications_m.invalid_request"),
    ({"before": "2024-01-15T10:30:00"}, 422, "notifications_m.invalid_request"),   # no offset: not RFC 3339
    ({"before": "yesterday"}, 422, "notifications_m.invalid_request"),
    ({"read": False}, 422, "notifications_m.invalid_request"),
])
def test_read_all_refuses_bad_bodies_and_changes_nothing(client, inbox, body, status, code):
    _, headers, _, _ = inbox
    r = read_all(client, headers, body)
    assert r.status_code == status
    assert r.get_json()["code"] == code
    assert counts(client, headers)["unread"] == 5


def test_read_all_customer_outside_the_claim_is_403(client, inbox):
    user_id, headers, _, _ = inbox
    limited = {"Authorization": f"Bearer {make_token(user_id, customers=[CUSTOMER])}"}
    r = read_all(client, limited, {"customer_id": str(OTHER)})
    assert r.status_code == 403
    assert r.get_json()["code"] == "notifications_m.invalid_customer_id"
    assert counts(client, headers)["unread"] == 5


def test_read_all_needs_a_user(client):
    assert read_all(client, SERVICE).status_code == 401
    assert read_all(client, {}).status_code == 401


def test_unread_count_after_every_kind_of_change(app, client, user, db):
    user_id, headers = user
    assert counts(client, headers)["unread"] == 0
    # a new notification stored by the dispatch job
    for title in ("one", "two", "three"):
        r = client.post("/v1/notifications/trigger", headers=SERVICE, json={
            "type": "chats", "event": "message_received", "title": title, "customer_id": str(CUSTOMER),
            "user_ids": [str(user_id)]})
        assert r.status_code == 202
    run_jobs(app)
    assert counts(client, headers) == {"unread": 3, "by_customer": {str(CUSTOMER): 3},
                                       "by_group": dict(GROUPS, chat=3), "ack_pending": 0}
    items = client.get("/v1/notifications", headers=headers).get_json()["items"]
    first, second, third = (item["id"] for item in items)
    # read
    assert client.patch(f"/v1/notifications/{first}/read", headers=headers).status_code == 200
    assert counts(client, headers)["unread"] == 2
    # reading it again changes nothing
    assert client.patch(f"/v1/notifications/{first}/read", headers=headers, json={}).status_code == 200
    assert counts(client, headers)["unread"] == 2
    # unread
    assert client.patch(f"/v1/notifications/{first}/read", headers=headers, json={"read": False}).status_code == 200
    assert counts(client, headers)["unread"] == 3
    # delete
    assert client.delete(f"/v1/notifications/{second}", headers=headers).status_code == 204
    assert counts(client, headers) == {"unread": 2, "by_customer": {str(CUSTOMER): 2},
                                       "by_group": dict(GROUPS, chat=2), "ack_pending": 0}
    # read-all
    assert read_all(client, headers).get_json() == {"updated": 2}
    assert counts(client, headers) == {"unread": 0, "by_customer": {}, "by_group": GROUPS, "ack_pending": 0}
    assert third  # three were listed


def test_inbox_unread_agrees_with_unread_count(client, inbox):
    _, headers, _, _ = inbox
    inbox_body = client.get("/v1/notifications", headers=headers).get_json()
    assert inbox_body["unread"] == counts(client, headers)["unread"] == 5


def test_unread_count_is_not_taken_for_a_notification_id(client, user):
    """The fixed paths are not read as `/{id}`."""
    _, headers = user
    assert client.get("/v1/notifications/unread-count", headers=headers).status_code == 200
    assert client.post("/v1/notifications/read-all", headers=headers).status_code == 200
