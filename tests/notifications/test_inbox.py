"""The inbox over REST: list, get, mark read/unread, delete; what a user sees and what is stored."""
import datetime
import re
import uuid

import pytest

from testkit.api import assert_envelope
from testkit.identity import bearer
from testkit.rows import fetch_row, insert_notification

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
NOTIFICATION_KEYS = ["id", "customer_id", "type", "event", "title", "content", "link_url", "link_text",
                     "rec_type", "rec_id", "read", "read_at", "created_at",
                     "expires_at", "ack_required", "ack_deadline", "acked_at"]   # SPEC's, then issue 21's


def ids(response):
    return [item["id"] for item in response.get_json()["items"]]




# ---------------------------------------------------------------- list


def test_empty_inbox(client, user):
    _, headers = user
    r = client.get("/v1/notifications", headers=headers)
    assert r.status_code == 200
    assert r.get_json() == {"items": [], "total": 0, "unread": 0, "limit": 50, "offset": 0}


def test_list_newest_first_by_seq(client, db, user):
    user_id, headers = user
    rows = [insert_notification(db, user_id, title=f"n{i}") for i in range(3)]
    # a row inserted last but with an older created_at is still first: the order is seq
    last = insert_notification(db, user_id, title="late", created_at="2000-01-01T00:00:00Z")
    r = client.get("/v1/notifications", headers=headers)
    assert r.status_code == 200
    body = r.get_json()
    assert ids(r) == [str(last["id"])] + [str(row["id"]) for row in reversed(rows)]
    assert [i["title"] for i in body["items"]] == ["late", "n2", "n1", "n0"]
    assert body["total"] == 4 and body["unread"] == 4
    assert body["limit"] == 50 and body["offset"] == 0


def test_list_item_shape(client, db, user):
    user_id, headers = user
    customer = uuid.uuid4()
    row = insert_notification(db, user_id, customer_id=customer)
    item = client.get("/v1/notifications", headers=headers).get_json()["items"][0]
    assert list(item) == NOTIFICATION_KEYS
    assert item["id"] == str(row["id"])
    assert item["customer_id"] == str(customer)
    assert item["read"] is False and item["read_at"] is None


def test_paging(client, db, user):
    user_id, headers = user
    rows = [insert_notification(db, user_id) for _ in range(5)]
    newest_first = [str(row["id"]) for row in reversed(rows)]

    r = client.get("/v1/notifications?limit=1", headers=headers)
    assert r.status_code == 200
    assert ids(r) == newest_first[:1]
    assert r.get_json()["total"] == 5 and r.get_json()["limit"] == 1

    r = client.get("/v1/notifications?limit=2&offset=2", headers=headers)
    assert ids(r) == newest_first[2:4]
    assert r.get_json()["offset"] == 2

    r = client.get("/v1/notifications?limit=2&offset=4", headers=headers)
    assert ids(r) == newest_first[4:]

    r = client.get("/v1/notifications?limit=200", headers=headers)
    assert r.status_code == 200
    assert ids(r) == newest_first
    assert r.get_json()["limit"] == 200

    r = client.get("/v1/notifications?offset=5", headers=headers)
    assert r.status_code == 200
    body = r.get_json()
    assert body["items"] == [] and body["total"] == 5 and body["unread"] == 5 and body["offset"] == 5

    r = client.get("/v1/notifications?offset=1000", headers=headers)
    assert r.get_json()["items"] == [] and r.get_json()["total"] == 5


def test_limit_200_returns_200_of_more(client, db, user):
    user_id, headers = user
    with db.cursor() as cur:
        cur.execute("INSERT INTO notifications (id, user_id, type, event, title)"
                    " SELECT gen_random_uuid(), %s, 'chat', 'message_received', 't' || g"
                    " FROM generate_series(1, 205) g", (user_id,))
    r = client.get("/v1/notifications?limit=200", headers=headers)
    assert r.status_code == 200
    body = r.get_json()
    assert len(body["items"]) == 200 and body["total"] == 205
    assert body["items"][0]["title"] == "t205"
    # default page size
    assert len(client.get("/v1/notifications", headers=headers).get_json()["items"]) == 50


def test_status_filter_and_counts(client, db, user):
    user_id, headers = user
    read_rows = [insert_notification(db, user_id, read_at="2024-01-16T00:00:00Z") for _ in range(2)]
    unread_rows = [insert_notification(db, user_id) for _ in range(3)]

    body = client.get("/v1/notifications", headers=headers).get_json()
    assert (body["total"], body["unread"], len(body["items"])) == (5, 3, 5)
    assert client.get("/v1/notifications?status=all", headers=headers).get_json() == body

    r = client.get("/v1/notifications?status=read", headers=headers)
    body = r.get_json()
    assert (body["total"], body["unread"]) == (2, 0)
    assert ids(r) == [str(row["id"]) for row in reversed(read_rows)]
    assert all(item["read"] is True and item["read_at"] for item in body["items"])

    r = client.get("/v1/notifications?status=unread", headers=headers)
    body = r.get_json()
    assert (body["total"], body["unread"]) == (3, 3)
    assert ids(r) == [str(row["id"]) for row in reversed(unread_rows)]
    assert all(item["read"] is False and item["read_at"] is None for item in body["items"])

    # counts are the filter's, not the page's
    body = client.get("/v1/notifications?status=unread&limit=1", headers=headers).get_json()
    assert (len(body["items"]), body["total"], body["unread"]) == (1, 3, 3)


def test_customer_filter_without_claim(client, db, user):
    user_id, headers = user
    a, b = uuid.uuid4(), uuid.uuid4()
    in_a = insert_notification(db, user_id, customer_id=a)
    in_b = insert_notification(db, user_id, customer_id=b, read_at="2024-01-16T00:00:00Z")
    none = insert_notification(db, user_id)

    r = client.get("/v1/notifications", headers=headers)
    assert ids(r) == [str(none["id"]), str(in_b["id"]), str(in_a["id"])]

    r = client.get(f"/v1/notifications?customer_id={a}", headers=headers)
    assert ids(r) == [str(in_a["id"])]
    assert (r.get_json()["total"], r.get_json()["unread"]) == (1, 1)

    r = client.get(f"/v1/notifications?customer_id={b}", headers=headers)
    assert ids(r) == [str(in_b["id"])]
    assert (r.get_json()["total"], r.get_json()["unread"]) == (1, 0)

    r = client.get(f"/v1/notifications?customer_id={b}&status=unread", headers=headers)
    assert ids(r) == [] and r.get_json()["total"] == 0

    # without a claim any customer may be asked for; one with nothing is empty, not 403
    r = client.get(f"/v1/notifications?customer_id={uuid.uuid4()}", headers=headers)
    assert r.status_code == 200 and r.get_json()["total"] == 0


def test_customers_claim_limits_the_inbox(client, db):
    user_id = uuid.uuid4()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    in_a = insert_notification(db, user_id, customer_id=a)
    in_b = insert_notification(db, user_id, customer_id=b)
    in_c = insert_notification(db, user_id, customer_id=c)
    none = insert_notification(db, user_id)
    headers = bearer(user_id, customers=[a, b])

    r = client.get("/v1/notifications", headers=headers)
    assert r.status_code == 200
    assert ids(r) == [str(none["id"]), str(in_b["id"]), str(in_a["id"])]
    assert (r.get_json()["total"], r.get_json()["unread"]) == (3, 3)
    assert str(in_c["id"]) not in ids(r)

    r = client.get(f"/v1/notifications?customer_id={a}", headers=headers)
    assert ids(r) == [str(in_a["id"])]

    r = client.get(f"/v1/notifications?customer_id={c}", headers=headers)
    assert_envelope(r, 403, "invalid_customer_id")

    # an empty claim: only notifications without a customer
    r = client.get("/v1/notifications", headers=bearer(user_id, customers=[]))
    assert ids(r) == [str(none["id"])]
    r = client.get(f"/v1/notifications?customer_id={a}", headers=bearer(user_id, customers=[]))
    assert_envelope(r, 403, "invalid_customer_id")


def test_soft_deleted_and_other_users_never_listed(client, db, user):
    user_id, headers = user
    mine = insert_notification(db, user_id)
    insert_notification(db, user_id, deleted_at="2024-01-16T00:00:00Z")
    insert_notification(db, user_id, deleted_at="2024-01-16T00:00:00Z", read_at="2024-01-16T00:00:00Z")
    other_customer = uuid.uuid4()
    insert_notification(db, uuid.uuid4(), customer_id=other_customer)
    insert_notification(db, uuid.uuid4())

    for query in ("", "?status=all", "?status=unread", "?status=read"):
        r = client.get("/v1/notifications" + query, headers=headers)
        expected = [] if query == "?status=read" else [str(mine["id"])]
        assert ids(r) == expected, query
        assert r.get_json()["total"] == len(expected)
    r = client.get(f"/v1/notifications?customer_id={other_customer}", headers=headers)
    assert r.get_json()["items"] == [] and r.get_json()["total"] == 0


def test_every_filter_pages_and_counts_exactly_what_is_stored(client, db):
    """Each combination of token claim, customer filter, status and page gives the rows, the
    total and the unread a reader of the table would compute: pages picked from the indexes,
    counts from subqueries, must agree with that at every offset."""
    user_id = uuid.uuid4()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    stored = []
    for i in range(60):
        row = insert_notification(
            db, user_id, customer_id=(a, a, b, None, c)[i % 5],
            read_at="2024-01-16T00:00:00Z" if i % 3 == 0 else None,
            deleted_at="2024-01-16T00:00:00Z" if i % 7 == 0 else None, in_app=i % 11 != 0)
        stored.append(row)
    for customer in (a, None):  # another user's rows of the same customers never count
        insert_notification(db, uuid.uuid4(), customer_id=customer)
    newest_first = [r for r in reversed(stored) if r["deleted_at"] is None and r["in_app"]]

    for claim in (None, [a, b], []):
        headers = bearer(user_id, customers=claim)
        for customer in (None, a, c):
            if claim is not None and customer is not None and customer not in claim:
                r = client.get(f"/v1/notifications?customer_id={customer}", headers=headers)
                assert_envelope(r, 403, "invalid_customer_id")
                continue
            for status in ("all", "read", "unread"):
                matching = [r for r in newest_first
                            if (r["customer_id"] == customer if customer is not None
                                else claim is None or r["customer_id"] is None or r["customer_id"] in claim)
                            and (status == "all" or (r["read_at"] is None) == (status == "unread"))]
                # a first page shorter than its limit counts itself: as long as the filter, one longer
                for limit, offset in ((50, 0), (7, 0), (7, 14), (200, 0), (5, 1000),
                                      (max(1, len(matching)), 0), (len(matching) + 1, 0)):
                    query = f"?status={status}&limit={limit}&offset={offset}"
                    if customer is not None:
                        query += f"&customer_id={customer}"
                    r = client.get("/v1/notifications" + query, headers=headers)
                    assert r.status_code == 200, (claim, query)
                    body = r.get_json()
                    assert ids(r) == [str(row["id"]) for row in matching[offset:offset + limit]], (claim, query)
                    assert body["total"] == len(matching), (claim, query)
                    assert body["unread"] == sum(row["read_at"] is None for row in matching), (claim, query)


def test_a_first_page_shorter_than_its_limit_is_its_own_count(app, db):
    """Such a page holds every notification of the filter, so its counts are the page's own and the
    count scans (an index leaf in every partition each) do not run at all; a full page runs them."""
    import psycopg2
    from app.notifications.repository import list_inbox
    user_id = uuid.uuid4()
    for i in range(5):
        insert_notification(db, user_id, read_at="2024-01-16T00:00:00Z" if i % 2 else None)
    conn = psycopg2.connect(app.config["DATABASE_URL"])

    def scanned(limit):
        """(total, unread, indexes the statement scanned), in a transaction of its own."""
        try:
            items, total, unread = list_inbox(conn, user_id, limit=limit)
            with conn.cursor() as cur:
                cur.execute("SELECT array_agg(relname::text) FROM pg_class WHERE relkind = 'i'"
                            " AND pg_stat_get_xact_numscans(oid) > 0")
                return total, unread, set(cur.fetchone()[0] or ())
        finally:
            conn.rollback()

    try:
        short, full = scanned(50), scanned(3)
    finally:
        conn.close()
    assert short[:2] == full[:2] == (5, 3)
    assert short[2] < full[2], (short, full)
    assert any(name.endswith("user_id_customer_id_seq_idx") for name in full[2] - short[2])   # the total's


# ---------------------------------------------------------------- get one


def test_get_one_shape(client, db, user):
    user_id, headers = user
    customer = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
    row = insert_notification(db, user_id, customer_id=customer)
    r = client.get(f"/v1/notifications/{row['id']}", headers=headers)
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert list(body) == NOTIFICATION_KEYS
    assert body == {
        "id": str(row["id"]), "customer_id": str(customer),
        "type": "chat", "event": "message_received", "title": "New Message",
        "content": "Hello from John", "link_url": "/chat/room/456", "link_text": "View Message",
        "rec_type": "chats", "rec_id": "789e4567-e89b-12d3-a456-426614174000",
        "read": False, "read_at": None, "created_at": body["created_at"],
        "expires_at": None, "ack_required": False, "ack_deadline": None, "acked_at": None,
    }
    assert RFC3339_UTC.match(body["created_at"])
    assert body["created_at"].startswith(row["created_at"].strftime("%Y-%m-%dT%H:%M:%S"))


def test_get_created_at_is_utc_whatever_the_session_zone(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id, created_at="2024-01-15T12:30:00+02:00", customer_id=None,
                              link_url=None, link_text=None, rec_type=None, rec_id=None)
    body = client.get(f"/v1/notifications/{row['id']}", headers=headers).get_json()
    assert body["created_at"].startswith("2024-01-15T10:30:00") and body["created_at"].endswith("Z")
    assert body["customer_id"] is None and body["link_url"] is None and body["rec_id"] is None


def test_get_other_users_is_the_same_404_as_a_random_id(client, db, user):
    _, headers = user
    theirs = insert_notification(db, uuid.uuid4())
    r_theirs = client.get(f"/v1/notifications/{theirs['id']}", headers=headers)
    r_random = client.get(f"/v1/notifications/{uuid.uuid4()}", headers=headers)
    body = assert_envelope(r_theirs, 404, "not_found")
    assert r_random.status_code == 404
    assert r_random.get_json() == body
    assert r_random.get_data() == r_theirs.get_data()


def test_get_non_uuid_is_400_invalid_id(client, user):
    _, headers = user
    for bad in ("123", "not-a-uuid", "123e4567-e89b-12d3-a456-42661417400z"):
        assert_envelope(client.get(f"/v1/notifications/{bad}", headers=headers), 400, "invalid_id")


def test_get_deleted_is_404(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id, deleted_at="2024-01-16T00:00:00Z")
    assert_envelope(client.get(f"/v1/notifications/{row['id']}", headers=headers), 404, "not_found")


# ---------------------------------------------------------------- mark read / unread


def test_patch_empty_body_marks_read(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers)
    assert r.status_code == 200
    body = r.get_json()
    assert list(body) == NOTIFICATION_KEYS
    assert body["id"] == str(row["id"]) and body["read"] is True
    assert RFC3339_UTC.match(body["read_at"])
    assert fetch_row(db, row["id"])["read_at"] is not None
    listed = client.get("/v1/notifications", headers=headers).get_json()
    assert listed["unread"] == 0 and listed["items"][0]["read"] is True


def test_patch_empty_json_object_marks_read(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={})
    assert r.status_code == 200 and r.get_json()["read"] is True
    assert fetch_row(db, row["id"])["read_at"] is not None
    # a JSON content type with no body at all is the same empty body
    other = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{other['id']}/read", headers=headers, data="",
                     content_type="application/json")
    assert r.status_code == 200 and r.get_json()["read"] is True
    assert fetch_row(db, other["id"])["read_at"] is not None


def test_patch_read_true_then_false(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={"read": True})
    assert r.status_code == 200 and r.get_json()["read"] is True
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={"read": False})
    assert r.status_code == 200
    assert r.get_json()["read"] is False and r.get_json()["read_at"] is None
    assert fetch_row(db, row["id"])["read_at"] is None
    assert client.get("/v1/notifications?status=unread", headers=headers).get_json()["total"] == 1


def test_patch_repeated_read_keeps_first_read_at(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id, read_at="2024-01-16T08:00:00Z")
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers)
    assert r.status_code == 200
    assert r.get_json()["read_at"].startswith("2024-01-16T08:00:00")
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={"read": True})
    assert r.get_json()["read_at"].startswith("2024-01-16T08:00:00")
    stored = fetch_row(db, row["id"])["read_at"]
    assert stored.astimezone(datetime.timezone.utc).isoformat().startswith("2024-01-16T08:00:00")


def test_patch_fresh_read_then_again_keeps_read_at(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    first = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers).get_json()["read_at"]
    stored = fetch_row(db, row["id"])["read_at"]
    second = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers).get_json()["read_at"]
    assert first == second
    assert fetch_row(db, row["id"])["read_at"] == stored


@pytest.mark.parametrize("body", [{"read": "yes"}, {"read": 1}, {"read": None}, {"read": "true"}])
def test_patch_read_not_a_boolean_is_422(client, db, user, body):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json=body)
    err = assert_envelope(r, 422, "invalid_request")
    assert "read" in err["errors"]
    assert fetch_row(db, row["id"])["read_at"] is None


@pytest.mark.parametrize("field", ["title", "read_at", "id", "bogus"])
def test_patch_unknown_or_read_only_field_is_422_naming_it(client, db, user, field):
    user_id, headers = user
    row = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json={field: "x"})
    err = assert_envelope(r, 422, "invalid_request")
    assert field in err["errors"]
    stored = fetch_row(db, row["id"])
    assert stored["read_at"] is None and stored["title"] == "New Message"


def test_patch_body_not_an_object_is_422(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    for body in ([], "read", True):
        r = client.patch(f"/v1/notifications/{row['id']}/read", headers=headers, json=body)
        assert_envelope(r, 422, "invalid_request")
    assert fetch_row(db, row["id"])["read_at"] is None


@pytest.mark.parametrize("method, path, column", [("patch", "/v1/notifications/{}/read", "read_at"),
                                                  ("delete", "/v1/notifications/{}", "deleted_at")])
def test_another_users_notification_is_404_like_a_missing_one_and_unchanged(client, db, user, method, path,
                                                                              column):
    _, headers = user
    send = getattr(client, method)
    theirs = insert_notification(db, uuid.uuid4())
    body = assert_envelope(send(path.format(theirs["id"]), headers=headers), 404, "not_found")
    assert fetch_row(db, theirs["id"])[column] is None
    assert send(path.format(uuid.uuid4()), headers=headers).get_json() == body
    assert_envelope(send(path.format("xyz"), headers=headers), 400, "invalid_id")


def test_patch_deleted_and_bad_id(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id, deleted_at="2024-01-16T00:00:00Z")
    assert_envelope(client.patch(f"/v1/notifications/{row['id']}/read", headers=headers), 404, "not_found")
    assert fetch_row(db, row["id"])["read_at"] is None
    assert_envelope(client.patch("/v1/notifications/nope/read", headers=headers), 400, "invalid_id")


# ---------------------------------------------------------------- delete


def test_delete_soft_deletes(client, db, user):
    user_id, headers = user
    row = insert_notification(db, user_id)
    keep = insert_notification(db, user_id)
    r = client.delete(f"/v1/notifications/{row['id']}", headers=headers)
    assert r.status_code == 204
    assert r.get_data() == b""

    stored = fetch_row(db, row["id"])
    assert stored is not None and stored["deleted_at"] is not None
    assert stored["title"] == row["title"] and stored["user_id"] == user_id
    assert fetch_row(db, keep["id"])["deleted_at"] is None

    assert_envelope(client.get(f"/v1/notifications/{row['id']}", headers=headers), 404, "not_found")
    assert_envelope(client.delete(f"/v1/notifications/{row['id']}", headers=headers), 404, "not_found")
    listed = client.get("/v1/notifications", headers=headers).get_json()
    assert [i["id"] for i in listed["items"]] == [str(keep["id"])] and listed["total"] == 1
