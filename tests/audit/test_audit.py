"""The tamper-evident audit log: one row per state-changing operation, a hash chain that
`flask audit verify` checks, and GET /v1/notifications/audit."""
import datetime
import getpass
import json
import threading
import time
import uuid

import psycopg2.extras
import pytest

from app.security.api_keys import plain_name
from app.config import DEV_SECRET_KEY
from app.security.keyed import keyed_hash
from testkit.identity import API_KEY, make_token, OTHER_API_KEY, SERVICE
from testkit.rows import insert_delivery, insert_notification

CUSTOMER = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
SERVICE_ID = plain_name(API_KEY, DEV_SECRET_KEY)


def rows(db):
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT * FROM audit_log ORDER BY id")
        return [dict(r) for r in cur.fetchall()]


def only_row(db):
    found = rows(db)
    assert len(found) == 1, found
    return found[0]


def tamper(owner_db, sql, params=()):
    """Change the log behind the service's back, as someone with the table owner's rights could."""
    with owner_db.cursor() as cur:
        cur.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        cur.execute(sql, params)
        cur.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")


def verify(app, *args):
    return app.test_cli_runner().invoke(args=["audit", "verify", *args])


# ------------------------------------------------------------------------------------ one row per operation

def test_trigger_is_recorded_with_the_service_and_request(app, client, db):
    user_id = uuid.uuid4()
    r = client.post("/v1/notifications/trigger", headers=dict(SERVICE, **{"X-Request-ID": "req-trigger-1",
                                                                          "Idempotency-Key": "k1"}),
                    json={"type": "chats", "event": "message_received", "title": "Hi", "customer_id": str(CUSTOMER),
                          "user_ids": [str(user_id)]})
    assert r.status_code == 202
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"]) == ("service", SERVICE_ID)
    assert (row["action"], row["target_type"], row["target_id"]) == ("notification.trigger", "trigger",
                                                                     r.get_json()["trigger_id"])
    # the service's own request id; the client's address as a keyed hash (tests/security/test_pii.py has more)
    assert row["request_id"] == r.headers["X-Request-ID"] != "req-trigger-1"
    assert row["client_ip"] == keyed_hash("audit-client-ip", "127.0.0.1", secret=app.config["SECRET_KEY"])
    assert row["change"] == {"type": "chat", "event": "message_received", "customer_id": str(CUSTOMER), "users": 1,
                             "idempotency_key": "k1"}
    # the same request again (idempotent replay) changes nothing and records nothing
    again = client.post("/v1/notifications/trigger", headers=dict(SERVICE, **{"Idempotency-Key": "k1"}),
                        json={"type": "chats", "event": "message_received", "title": "Hi",
                              "customer_id": str(CUSTOMER), "user_ids": [str(user_id)]})
    assert again.get_json() == r.get_json()
    assert len(rows(db)) == 1


def test_the_api_key_itself_is_never_recorded(client, db):
    for key in (API_KEY, OTHER_API_KEY):
        r = client.post("/v1/notifications/trigger", headers={"X-API-Key": key},
                        json={"type": "task", "event": "task_due", "title": "Due", "user_ids": [str(uuid.uuid4())]})
        assert r.status_code == 202
    found = rows(db)
    assert [r["actor_id"] for r in found] == [plain_name(k, DEV_SECRET_KEY) for k in (API_KEY, OTHER_API_KEY)]
    text = json.dumps(found, default=str)
    assert API_KEY not in text and OTHER_API_KEY not in text


def test_direct_push_is_recorded(app, client, db):
    users = [str(uuid.uuid4()), str(uuid.uuid4())]
    r = client.post("/v1/notifications/sse", headers=SERVICE,
                    json={"type": "chats", "event": "mention", "title": "Hey", "user_ids": users})
    assert r.status_code == 200
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("service", SERVICE_ID, "notification.push")
    assert row["target_type"] == "push"
    assert row["change"] == {"type": "chat", "event": "mention", "customer_id": None, "users": 2,
                             "user_ids_hash": keyed_hash("audit-user-ids", ",".join(sorted(users)), 64,
                                                         secret=app.config["SECRET_KEY"])}


@pytest.mark.parametrize("body, action, read", [(None, "notification.read", True),
                                                ({"read": False}, "notification.unread", False)])
def test_read_and_unread_are_recorded(client, user, db, body, action, read):
    user_id, headers = user
    notification = insert_notification(db, user_id)
    r = client.patch(f"/v1/notifications/{notification['id']}/read", headers=headers, json=body or {})
    assert r.status_code == 200
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"]) == ("user", str(user_id))
    assert (row["action"], row["target_type"], row["target_id"]) == (action, "notification", str(notification["id"]))
    assert row["change"] == {"read": read}


def test_delete_is_recorded(client, user, db):
    user_id, headers = user
    notification = insert_notification(db, user_id)
    assert client.delete(f"/v1/notifications/{notification['id']}", headers=headers).status_code == 204
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("user", str(user_id), "notification.delete")
    assert (row["target_type"], row["target_id"]) == ("notification", str(notification["id"]))


def test_read_all_is_recorded(client, user, db):
    user_id, headers = user
    insert_notification(db, user_id, type="task", event="task_due")
    insert_notification(db, user_id, type="task", event="task_due")
    r = client.post("/v1/notifications/read-all", headers=headers,
                    json={"group": "tasks", "before": "2030-01-01T00:00:00Z"})
    assert r.get_json() == {"updated": 2}
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("user", str(user_id), "notification.read_all")
    assert (row["target_type"], row["target_id"]) == ("user", str(user_id))
    assert row["change"] == {"read": True, "customer_id": None, "group": "task",
                             "before": "2030-01-01T00:00:00.000000Z", "updated": 2}


def test_preference_change_is_recorded(client, user, db):
    user_id, headers = user
    r = client.put("/v1/notifications/preferences", headers=headers, json={"changes": [
        {"group": "chats", "event": "mention", "channel": "email", "customer_id": str(CUSTOMER), "enabled": False}]})
    assert r.status_code == 200
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("user", str(user_id), "preferences.update")
    assert row["change"] == {"changes": [{"group": "chat", "event": "mention", "channel": "email",
                                          "customer_id": str(CUSTOMER), "enabled": False}]}


def test_contact_put_and_delete_are_recorded_without_the_addresses(client, db):
    user_id = uuid.uuid4()
    r = client.put(f"/v1/notifications/users/{user_id}/contact", headers=SERVICE,
                   json={"email": "ada@example.com", "phone": "+15005550006"})
    assert r.status_code == 200
    assert client.delete(f"/v1/notifications/users/{user_id}/contact", headers=SERVICE).status_code == 204
    put, delete = rows(db)
    assert (put["actor_type"], put["actor_id"], put["action"]) == ("service", SERVICE_ID, "contact.update")
    assert (put["target_type"], put["target_id"]) == ("user", str(user_id))
    assert put["change"] == {"set": ["email", "phone"], "cleared": ["locale", "timezone"]}
    assert "ada@example.com" not in json.dumps(put, default=str)
    assert (delete["actor_type"], delete["action"], delete["target_id"]) == ("service", "contact.delete", str(user_id))


def test_operator_re_enqueue_is_recorded(app, db):
    user_id = uuid.uuid4()
    notification = insert_notification(db, user_id)
    ids = []
    with db.cursor() as cur:
        for channel in ("email", "sms"):
            ids.append(insert_delivery(db, notification["id"], user_id=user_id, channel=channel, status="failed",
                                       attempts=5))
    result = app.test_cli_runner().invoke(args=["deliveries", "retry"])
    assert result.exit_code == 0, result.output
    assert "2 deliveries re-enqueued" in result.output
    row = only_row(db)
    assert (row["actor_type"], row["actor_id"], row["action"]) == ("operator", getpass.getuser(), "delivery.retry")
    assert sorted(row["change"]["ids"]) == sorted(str(i) for i in ids)
    assert row["request_id"] is None and row["client_ip"] is None


def test_refused_operations_record_nothing(client, user, db):
    user_id, headers = user
    other = insert_notification(db, uuid.uuid4())
    assert client.patch(f"/v1/notifications/{other['id']}/read", headers=headers).status_code == 404
    assert client.delete(f"/v1/notifications/{uuid.uuid4()}", headers=headers).status_code == 404
    assert client.post("/v1/notifications/read-all", headers=headers, json={"group": "fax"}).status_code == 400
    assert client.put("/v1/notifications/preferences", headers=headers,
                      json={"changes": [{"group": "security", "event": "login_alert", "enabled": False}]}
                      ).status_code == 400
    assert client.delete(f"/v1/notifications/users/{uuid.uuid4()}/contact", headers=SERVICE).status_code == 404
    assert client.get("/v1/notifications", headers=headers).status_code == 200        # reads are not audited
    assert rows(db) == []


# ------------------------------------------------------------------------------------ the chain

def make_history(client, db, count=5):
    user_id = uuid.uuid4()
    headers = {"Authorization": f"Bearer {make_token(user_id)}"}
    ids = [insert_notification(db, user_id)["id"] for _ in range(count)]
    for nid in ids:
        assert client.patch(f"/v1/notifications/{nid}/read", headers=headers).status_code == 200
    return user_id, headers, ids


def seal(app):
    """What every worker does every relay interval (workers/relay.py)."""
    from workers.relay import seal_audit
    return seal_audit(app)


def seal_pending(app, db, deadline=10):
    """Passes until no row waits (returns how many they sealed). A pass's horizon is the oldest
    transaction in progress in the cluster, less those pg_stat_activity shows in other databases: one
    of another database that ended between the snapshot and that read holds a pass back, so on a
    cluster busy with other databases (other test runs) a row may take a pass or two more."""
    sealed, until = 0, time.monotonic() + deadline
    while True:
        sealed += seal(app)
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM audit_log WHERE hash IS NULL")
            if cur.fetchone()[0] == 0 or time.monotonic() > until:
                return sealed
        time.sleep(0.1)


def chain(db):
    """The sealed rows in chain order."""
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT * FROM audit_log WHERE chain IS NOT NULL ORDER BY chain")
        return [dict(r) for r in cur.fetchall()]


def test_rows_are_appended_unchained_then_sealed_into_one_chain(app, client, db):
    make_history(client, db, 4)
    assert [(r["chain"], r["prev_hash"], r["hash"]) for r in rows(db)] == [(None, None, None)] * 4
    assert seal_pending(app, db) == 4
    found = chain(db)
    assert [r["id"] for r in found] == [r["id"] for r in rows(db)]     # one writer: commit order is id order
    assert [r["chain"] for r in found] == [1, 2, 3, 4]
    assert found[0]["prev_hash"] == "0" * 64
    for before, after in zip(found, found[1:]):
        assert after["prev_hash"] == before["hash"]
    assert len({r["hash"] for r in found}) == 4
    assert seal(app) == 0
    make_history(client, db, 1)
    assert seal_pending(app, db) == 1
    assert chain(db)[-1]["prev_hash"] == found[-1]["hash"]


def test_a_row_inserted_already_chained_is_sealed_like_the_others(app, client, db):
    """A web process of the previous release, still running during a deploy, hashes at insert time
    (after the newest row, which may be unsealed): the table keeps chaining to the sealer."""
    make_history(client, db, 1)
    with db.cursor() as cur:
        cur.execute("INSERT INTO audit_log (at, actor_type, actor_id, action, target_type, change, prev_hash, hash,"
                    " chain) VALUES (now(), 'system', 'old-release', 'test.write', 'thread', '{}', repeat('0', 64),"
                    " repeat('b', 64), 1)")
    assert [(r["chain"], r["hash"]) for r in rows(db)] == [(None, None)] * 2
    assert seal_pending(app, db) == 2
    result = verify(app)
    assert result.exit_code == 0 and "intact: 2 rows" in result.output, result.output


def test_verify_passes_on_an_intact_log(app, client, db):
    assert verify(app).exit_code == 0
    assert "0 rows" in verify(app).output
    make_history(client, db, 5)
    result = verify(app)                                   # it seals first
    assert result.exit_code == 0, result.output
    head = chain(db)[-1]
    assert result.output.strip() == (f"audit log intact: 5 rows; head position 5 hash {head['hash']}; no anchor to"
                                     " check against (set AUDIT_ANCHOR_PATH or pass --head)")


def test_even_the_owner_cannot_update_or_delete_rows_while_the_trigger_stands(app, client, db, owner_db):
    """The service's role has no UPDATE or DELETE at all (tests/audit/test_roles.py); the table's
    trigger refuses them to its owner too, unless the owner disables it (which the chain shows)."""
    make_history(client, db, 2)
    first = rows(db)[0]
    with pytest.raises(psycopg2.Error, match="append-only"):    # not even a row still unsealed
        with owner_db.cursor() as cur:
            cur.execute("UPDATE audit_log SET actor_id = 'someone-else' WHERE id = %s", (first["id"],))
    with pytest.raises(psycopg2.Error, match="append-only"):    # sealing may not change the content
        with owner_db.cursor() as cur:
            cur.execute("UPDATE audit_log SET chain = 1, prev_hash = repeat('0', 64), hash = repeat('a', 64),"
                        " actor_id = 'mallory' WHERE id = %s", (first["id"],))
    seal(app)
    with pytest.raises(psycopg2.Error, match="append-only"):    # nor be done twice
        with owner_db.cursor() as cur:
            cur.execute("UPDATE audit_log SET hash = repeat('a', 64) WHERE id = %s", (first["id"],))
    for sql in ("UPDATE audit_log SET actor_id = 'someone-else'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(psycopg2.Error, match="append-only"):
            with owner_db.cursor() as cur:
                cur.execute(sql)


@pytest.mark.parametrize("tampering, victim, broken", [
    ("UPDATE audit_log SET change = '{\"read\": false}' WHERE id = %s", 2,
     "BROKEN at position 3 (row {2}): its content does not match its HMAC"),
    ("DELETE FROM audit_log WHERE id = %s", 2,
     "BROKEN at position 3 (row {3}): the row here has position 4"),
    ("UPDATE audit_log SET actor_id = 'mallory', hash = repeat('a', 64) WHERE id = %s", 1,
     "BROKEN at position 2 (row {1})"),
], ids=["an_edited_row", "the_row_after_a_deleted_one", "an_edit_whose_hash_was_recomputed"])
def test_verify_names_the_first_broken_row(app, client, db, owner_db, tampering, victim, broken):
    make_history(client, db, 5)
    seal(app)
    ids = [row["id"] for row in chain(db)]
    tamper(owner_db, tampering, (ids[victim],))
    result = verify(app)
    assert result.exit_code == 1
    assert broken.format(*ids) in result.output


def test_verify_head_sees_rows_removed_from_the_end(app, client, db, owner_db):
    make_history(client, db, 3)
    seal(app)
    head = chain(db)[-1]
    assert verify(app, "--head", f"3:{head['hash']}").exit_code == 0
    tamper(owner_db, "DELETE FROM audit_log WHERE id = %s", (head["id"],))
    assert verify(app).exit_code == 0                  # the chain alone cannot see it ...
    result = verify(app, "--head", f"3:{head['hash']}")       # ... the head noted earlier can
    assert result.exit_code == 1
    assert "BROKEN at position 3: the chain ends at position 2" in result.output


def _record(conn, n):
    from app import audit
    return audit.record(conn, "test.write", ("thread", n), {"n": n}, actor=("system", "test"))


def test_an_open_transaction_holds_back_the_rows_after_it_and_chain_order_is_commit_safe(app, clean, db):
    """T1 takes its transaction id first, T2 commits a row, T1 appends later and commits last: the
    sealer must not seal T2's row while T1 could still commit one before it, and then chains T1's
    row first (its transaction is older) although its id is higher."""
    t1, t2 = psycopg2.connect(clean["DATABASE_URL"]), psycopg2.connect(clean["DATABASE_URL"])
    try:
        with t1.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()")     # T1 begins writing
        row_b = _record(t2, 2)
        t2.commit()
        assert seal(app) == 0                               # T1 is open: B has to wait
        result = verify(app)
        assert result.exit_code == 0, result.output
        assert "intact: 0 rows; 1 newer rows not sealed yet" in result.output
        row_a = _record(t1, 1)
        rolled_back = _record(t2, 3)
        t2.rollback()                                       # never visible, never sealed
        t1.commit()
    finally:
        t1.close()
        t2.close()
    assert row_a > row_b > 0 and rolled_back > row_a
    assert seal_pending(app, db) == 2
    assert [r["id"] for r in chain(db)] == [row_a, row_b]
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("audit log intact: 2 rows;") and "not sealed" not in result.output


def test_a_transaction_in_another_database_does_not_hold_sealing_back(app, clean, client, db):
    """Transaction ids are shared by every database of a server: a long transaction elsewhere (another
    service, a migration) must not stall this log, as the server-wide xmin would."""
    from testkit.database import with_dbname
    elsewhere = psycopg2.connect(with_dbname(clean["DATABASE_URL"], "postgres"))
    try:
        with elsewhere.cursor() as cur:
            cur.execute("SELECT pg_current_xact_id()")     # an xid, held open
        make_history(client, db, 2)
        assert seal_pending(app, db) == 2
    finally:
        elsewhere.close()


def test_concurrent_writers_and_sealers_keep_one_verifiable_chain(app, db):
    from app import db as app_db
    start = threading.Barrier(10)
    failures, writing = [], threading.Event()

    def writer(n):
        try:
            with app.app_context(), app_db.connection() as conn:
                start.wait()
                for i in range(25):
                    with app_db.transaction(conn):
                        _record(conn, n * 100 + i)
        except Exception as exc:  # reported below
            failures.append(exc)

    def sealer():
        try:
            start.wait()
            while not writing.is_set():
                seal(app)
        except Exception as exc:
            failures.append(exc)

    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    sealers = [threading.Thread(target=sealer) for _ in range(2)]
    for thread in writers + sealers:
        thread.start()
    for thread in writers:
        thread.join(60)
    writing.set()
    for thread in sealers:
        thread.join(60)
    assert failures == []
    seal(app)
    assert len(rows(db)) == 200 and len(chain(db)) == 200
    assert [r["chain"] for r in chain(db)] == list(range(1, 201))
    result = verify(app)
    assert result.exit_code == 0, result.output
    assert "intact: 200 rows" in result.output


@pytest.mark.slow
def test_the_worker_seals_within_seconds(clean, client, db, tmp_path):
    from testkit.config_files import queue_config
    from testkit.processes import ProcessGroup, wait_until
    make_history(client, db, 3)
    with ProcessGroup(str(tmp_path)) as group:
        group.start_worker(dict(clean, QUEUE_CONFIG=queue_config(tmp_path)))
        wait_until(lambda: len(chain(db)) == 3, timeout=20, message="the worker's sealer")


# ------------------------------------------------------------------------------------ GET /audit

def audit_page(client, **query):
    r = client.get("/v1/notifications/audit", headers=SERVICE, query_string=query)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_endpoint_lists_newest_first_and_verifies_each_row(app, client, db):
    user_id, _, ids = make_history(client, db, 3)
    before = audit_page(client)
    assert before["verified"] is False
    assert [(i["sealed"], i["verified"], i["hash"]) for i in before["items"]] == [(False, False, None)] * 3
    seal(app)
    body = audit_page(client)
    assert body["verified"] is True and body["has_more"] is False
    assert [item["target_id"] for item in body["items"]] == [str(i) for i in reversed(ids)]
    item = body["items"][0]
    assert set(item) == {"id", "at", "actor_type", "actor_id", "request_id", "client_ip", "action", "target_type",
                         "target_id", "change", "position", "prev_hash", "hash", "key_id", "sealed", "verified"}
    assert (item["actor_type"], item["actor_id"], item["action"]) == ("user", str(user_id), "notification.read")
    assert item["sealed"] is True and item["verified"] is True


def test_endpoint_filters(client, db):
    user_id, headers, ids = make_history(client, db, 2)
    assert client.delete(f"/v1/notifications/{ids[0]}", headers=headers).status_code == 204
    client.put(f"/v1/notifications/users/{user_id}/contact", headers=SERVICE, json={"email": "a@example.com"})
    assert [i["action"] for i in audit_page(client, actor=str(user_id))["items"]] == [
        "notification.delete", "notification.read", "notification.read"]
    assert [i["action"] for i in audit_page(client, actor=f"service:{SERVICE_ID}")["items"]] == ["contact.update"]
    assert audit_page(client, actor=f"user:{SERVICE_ID}")["items"] == []
    assert [i["target_id"] for i in audit_page(client, action="notification.delete")["items"]] == [str(ids[0])]
    assert [i["action"] for i in audit_page(client, target=f"notification:{ids[0]}")["items"]] == [
        "notification.delete", "notification.read"]
    assert [i["action"] for i in audit_page(client, target=str(user_id))["items"]] == ["contact.update"]
    found = rows(db)
    middle = found[1]["at"].astimezone(datetime.timezone.utc)
    since = audit_page(client, **{"from": middle.isoformat()})["items"]
    assert [i["id"] for i in since] == [r["id"] for r in reversed(found[1:])]
    until = audit_page(client, to=middle.isoformat())["items"]
    assert [i["id"] for i in until] == [found[0]["id"]]


def test_endpoint_pages(client, db):
    make_history(client, db, 5)
    found = [r["id"] for r in reversed(rows(db))]
    first = audit_page(client, limit=2)
    assert [i["id"] for i in first["items"]] == found[:2] and first["has_more"] is True
    last = audit_page(client, limit=2, offset=4)
    assert [i["id"] for i in last["items"]] == found[4:] and last["has_more"] is False


def test_endpoint_marks_an_edited_row_and_the_row_after_a_deleted_one(app, client, db, owner_db):
    make_history(client, db, 5)
    seal(app)
    found = rows(db)
    tamper(owner_db, "UPDATE audit_log SET actor_id = 'mallory' WHERE id = %s", (found[1]["id"],))
    tamper(owner_db, "DELETE FROM audit_log WHERE id = %s", (found[3]["id"],))
    body = audit_page(client)
    assert body["verified"] is False
    flags = {item["id"]: item["verified"] for item in body["items"]}
    assert flags == {found[0]["id"]: True, found[1]["id"]: False, found[2]["id"]: True, found[4]["id"]: False}


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "501"}, {"from": "yesterday"},
                                   {"from": "2024-01-02T00:00:00Z", "to": "2024-01-01T00:00:00Z"},
                                   {"who": "me"}])
def test_endpoint_refuses_bad_queries(client, query):
    r = client.get("/v1/notifications/audit", headers=SERVICE, query_string=query)
    assert r.status_code == 422
    assert r.get_json()["code"] == "notifications_m.invalid_request"


def test_endpoint_needs_an_api_key(client, user):
    _, headers = user
    assert client.get("/v1/notifications/audit", headers=headers).status_code == 401
    assert client.get("/v1/notifications/audit").status_code == 401
