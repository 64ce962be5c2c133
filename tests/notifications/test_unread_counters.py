"""The unread counters of migration 0011 stay equal to the GROUP BY over the notifications.

`truth` is the count the service made before the counters existed (one GROUP BY over the unread,
visible rows); `counters` is what the triggers keep. Every test changes notifications through the
service's own code (the endpoints, the dispatch job, the retention purge) or plain SQL, and
compares the two; the endpoint's answers are compared with payloads built from the truth.
"""
import datetime
import os
import random
import shutil
import threading
import uuid

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit import api
from testkit.config_files import shipped_groups
from testkit.identity import bearer
from testkit.jobs import run_jobs
from testkit.rows import insert_notification

C1 = uuid.UUID("550e8400-e29b-41d4-a716-446655440000")
C2 = uuid.UUID("660e8400-e29b-41d4-a716-446655440000")
NIL = uuid.UUID(int=0)
GROUPS = shipped_groups()
OLD = datetime.timedelta(days=400)     # past task's 365-day retention

TRUTH = ("SELECT user_id, customer_id, type, count(*) FROM notifications"
         " WHERE deleted_at IS NULL AND in_app AND read_at IS NULL GROUP BY user_id, customer_id, type")


def truth(db):
    with db.cursor() as cur:
        cur.execute(TRUTH)
        return {(u, c, t): n for u, c, t, n in cur.fetchall()}


def counters(db):
    """The non-zero counters (a negative one would show up too)."""
    with db.cursor() as cur:
        cur.execute("SELECT user_id, customer_id, type, unread FROM notification_unread_counts WHERE unread <> 0")
        return {(u, c, t): n for u, c, t, n in cur.fetchall()}


def assert_exact(db):
    assert counters(db) == truth(db)


def expected_payload(db, user_id, customer_id=None, customers=None):
    """GET /unread-count's answer, built from the truth with the contract's scope rules."""
    payload = {"unread": 0, "by_customer": {}, "by_group": dict.fromkeys(GROUPS, 0), "ack_pending": 0}
    for (u, c, t), n in truth(db).items():
        if u != user_id or (customer_id is not None and c != customer_id) \
                or (customer_id is None and customers is not None and c is not None and c not in customers):
            continue
        key = "none" if c is None else str(c)
        payload["unread"] += n
        payload["by_customer"][key] = payload["by_customer"].get(key, 0) + n
        payload["by_group"][t] += n
    return payload


def assert_endpoint_agrees(client, db, user_id):
    """The endpoint, without a filter, per customer, and under a `customers` claim."""
    assert client.get("/v1/notifications/unread-count", headers=bearer(user_id)).get_json() == \
        expected_payload(db, user_id)
    for customer in (C1, C2):
        r = client.get(f"/v1/notifications/unread-count?customer_id={customer}", headers=bearer(user_id))
        assert r.get_json() == expected_payload(db, user_id, customer_id=customer)
    r = client.get("/v1/notifications/unread-count", headers=bearer(user_id, customers=[C1]))
    assert r.get_json() == expected_payload(db, user_id, customers={C1})


def trigger(client, users, group="chat", customer=C1, title="Hi"):
    """A trigger of the group's one event here, for `customer` (None: no customer); its id."""
    event = {"chat": "message_received", "task": "task_due"}[group]
    customer_field = {} if customer is None else {"customer_id": str(customer)}
    return api.trigger(client, users, type=group, event=event, title=title, **customer_field)["trigger_id"]


def purge(app):
    from workers import jobs
    with app.app_context():
        return jobs.purge_expired()


def ids_of(client, user_id):
    items = client.get("/v1/notifications?limit=200", headers=bearer(user_id)).get_json()["items"]
    return [item["id"] for item in items]


def test_counters_follow_every_kind_of_change(app, client, db):
    alice, bob, hidden = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # hidden switched the in-app channel of chat off: stored, never counted
    assert client.put("/v1/notifications/preferences", headers=bearer(hidden), json={
        "changes": [{"group": "chat", "channel": "system", "enabled": False}]}).status_code == 200
    # the fan-out: chat for C1 and for no customer, task for C2
    trigger(client, [alice, bob, hidden])
    trigger(client, [alice, bob, hidden], customer=None)
    trigger(client, [alice, hidden], group="task", customer=C2)
    trigger(client, [alice], group="task", customer=C2)
    run_jobs(app)
    assert_exact(db)
    assert counters(db)[(alice, C2, "task")] == 2 and (hidden, C1, "chat") not in counters(db)
    assert counters(db)[(hidden, C2, "task")] == 1
    for user_id in (alice, bob, hidden):
        assert_endpoint_agrees(client, db, user_id)
    first, second, third, *_ = ids_of(client, alice)
    steps = [
        ("patch", f"/v1/notifications/{first}/read", None, 200),               # read
        ("patch", f"/v1/notifications/{first}/read", {}, 200),                 # read again: no change
        ("patch", f"/v1/notifications/{first}/read", {"read": False}, 200),    # unread
        ("patch", f"/v1/notifications/{first}/read", {"read": False}, 200),    # unread again
        ("delete", f"/v1/notifications/{second}", None, 204),                  # delete an unread one
        ("patch", f"/v1/notifications/{third}/read", None, 200),
        ("delete", f"/v1/notifications/{third}", None, 204),                   # delete a read one
        ("post", "/v1/notifications/read-all", {"group": "task", "customer_id": str(C2)}, 200),
    ]
    for method, path, body, status in steps:
        r = getattr(client, method)(path, headers=bearer(alice), json=body)
        assert r.status_code == status, (path, r.get_json())
        assert_exact(db)
        assert_endpoint_agrees(client, db, alice)
    # read-all with each filter, for bob (with new unread ones first)
    trigger(client, [bob], customer=C2)
    trigger(client, [bob], group="task", customer=None)
    run_jobs(app)
    newest = client.get("/v1/notifications?limit=1", headers=bearer(bob)).get_json()["items"][0]
    for body, headers in (({"before": newest["created_at"]}, bearer(bob)),
                          ({"group": "chats"}, bearer(bob)),
                          ({"customer_id": str(C1)}, bearer(bob)),
                          ({}, bearer(bob, customers=[C2])),          # the claim: C2 and no customer
                          (None, bearer(bob))):
        r = client.post("/v1/notifications/read-all", headers=headers, json=body)
        assert r.status_code == 200, r.get_json()
        assert_exact(db)
        assert_endpoint_agrees(client, db, bob)
    assert expected_payload(db, bob)["unread"] == 0
    # the retention purge deletes old task notifications, read or not, deleted or not
    long_ago = "2020-01-01T00:00:00Z"
    for read_at, deleted_at in ((None, None), (None, None), (long_ago, None), (None, long_ago)):
        insert_notification(db, alice, type="task", event="task_due", customer_id=C2, read_at=read_at,
                            deleted_at=deleted_at, created_at=datetime.datetime.now(datetime.timezone.utc) - OLD)
    before = counters(db)[(alice, C2, "task")]
    assert_exact(db)
    assert purge(app) == {"task": 4}
    assert_exact(db)
    assert counters(db).get((alice, C2, "task"), 0) == before - 2
    assert_endpoint_agrees(client, db, alice)


def test_a_chunk_stored_again_counts_nothing_twice(app, db):
    """A big trigger's resumed run stores its last committed chunk again (app/dispatch/fanout.py):
    it inserts nothing the second time, and the counters' trigger sees only the rows really
    inserted."""
    from app.dispatch.repository import store_chunk
    users, trigger_id = [uuid.uuid4() for _ in range(5)], uuid.uuid4()
    body = {"type": "chat", "event": "message_received", "title": "Twice", "customer_id": None}
    conn = psycopg2.connect(app.config["DATABASE_URL"])
    try:
        for resumed in (False, True):
            assert len(store_chunk(conn, trigger_id, body, users, hidden_users=users[:1], resumed=resumed)) == 5
            conn.commit()
    finally:
        conn.close()
    assert_exact(db)
    assert counters(db) == {(u, None, "chat"): 1 for u in users[1:]}


def test_no_customer_and_the_nil_customer_are_different_keys(client, db):
    user_id = uuid.uuid4()
    for customer in (None, None, NIL):
        insert_notification(db, user_id, customer_id=customer)
    assert counters(db) == {(user_id, None, "chat"): 2, (user_id, NIL, "chat"): 1}
    assert client.get("/v1/notifications/unread-count", headers=bearer(user_id)).get_json()["by_customer"] == {
        "none": 2, str(NIL): 1}


def test_rows_dropping_to_zero_are_kept_and_not_reported(client, db):
    user_id = uuid.uuid4()
    row = insert_notification(db, user_id, customer_id=C1)
    assert client.patch(f"/v1/notifications/{row['id']}/read", headers=bearer(user_id)).status_code == 200
    with db.cursor() as cur:
        cur.execute("SELECT unread FROM notification_unread_counts WHERE user_id = %s", (user_id,))
        assert cur.fetchall() == [(0,)]
    assert client.get("/v1/notifications/unread-count", headers=bearer(user_id)).get_json() == {
        "unread": 0, "by_customer": {}, "by_group": dict.fromkeys(GROUPS, 0), "ack_pending": 0}


def test_any_update_moves_the_count_with_the_row(db):
    """Not something the service does today, but the trigger nets any UPDATE: a row moved to another
    user, customer or group, hidden or shown again."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    rows = [insert_notification(db, alice, customer_id=C1) for _ in range(3)]
    with db.cursor() as cur:
        for sql, args in (("UPDATE notifications SET user_id = %s WHERE id = %s", (bob, rows[0]["id"])),
                          ("UPDATE notifications SET customer_id = NULL, type = 'task' WHERE id = %s",
                           (rows[1]["id"],)),
                          ("UPDATE notifications SET in_app = false WHERE user_id = %s", (alice,)),
                          ("UPDATE notifications SET in_app = true, title = 'x'", ()),
                          ("UPDATE notifications SET content = 'unrelated'", ())):
            cur.execute(sql, args)
            assert_exact(db)
    assert counters(db) == {(bob, C1, "chat"): 1, (alice, None, "task"): 1, (alice, C1, "chat"): 1}


def test_truncate_empties_the_counters(db, owner_db):
    insert_notification(db, uuid.uuid4())
    assert counters(db)
    with owner_db.cursor() as cur:      # an operator's TRUNCATE: the service's role has no such right
        cur.execute("TRUNCATE notifications CASCADE")
    assert counters(db) == {} and truth(db) == {}


def test_the_migration_counts_what_was_already_stored(empty_database, tmp_path):
    """A database that had notifications before 0011: the backfill counts them."""
    from app.migrate import MIGRATIONS_DIR, migrate, migration_files
    for version, path in migration_files():
        if version < "0011":
            shutil.copy(path, tmp_path / os.path.basename(path))
    migrate(empty_database, directory=str(tmp_path), echo=lambda *_: None)
    users = [uuid.uuid4() for _ in range(3)]
    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    try:
        for n, user_id in enumerate(users * 4):
            insert_notification(conn, user_id, customer_id=(None, C1, C2)[n % 3], type=GROUPS[n % len(GROUPS)],
                                read_at="2024-01-01T00:00:00Z" if n % 5 == 0 else None,
                                deleted_at="2024-01-01T00:00:00Z" if n % 7 == 0 else None, in_app=n % 11 != 0)
        assert "0011_unread_counters" in migrate(empty_database, directory=MIGRATIONS_DIR, echo=lambda *_: None)
        assert counters(conn) == truth(conn) and len(truth(conn)) > 3
        insert_notification(conn, users[0])      # and the triggers count from there on
        assert counters(conn) == truth(conn)
    finally:
        conn.close()


# ------------------------------------------------------------------------- random sequences

USER = st.integers(0, 2)
CUSTOMER = st.sampled_from([None, C1, C2])
OPERATIONS = st.one_of(
    st.tuples(st.just("store"), st.sets(USER, min_size=1), CUSTOMER, st.sampled_from(["chat", "task"]),
              st.sets(USER)),
    st.tuples(st.just("insert"), USER, CUSTOMER, st.sampled_from(GROUPS), st.booleans(), st.booleans(),
              st.booleans(), st.booleans()),
    st.tuples(st.just("read"), USER, st.integers(0, 20), st.booleans(), st.booleans()),
    st.tuples(st.just("delete"), USER, st.integers(0, 20)),
    st.tuples(st.just("read_all"), USER, st.sampled_from([None, C1, C2]), st.sampled_from([None, "chats", "task"]),
              st.one_of(st.none(), st.integers(0, 20)), st.booleans()),
    st.tuples(st.just("move"), USER, st.integers(0, 20), USER, CUSTOMER),
    st.tuples(st.just("purge")),
)


class Inbox:
    """Applies one generated operation through the service's code."""

    def __init__(self, app, client, db, users):
        self.app, self.client, self.db, self.users = app, client, db, users

    def rows(self, user):
        with self.db.cursor() as cur:
            cur.execute("SELECT id, created_at FROM notifications WHERE user_id = %s ORDER BY seq", (self.users[user],))
            return cur.fetchall()

    def pick(self, user, k):
        rows = self.rows(user)
        return rows[k % len(rows)] if rows else None

    def store(self, users, customer, group, hidden):
        from app.dispatch.repository import store_chunk
        conn = psycopg2.connect(self.app.config["DATABASE_URL"])
        try:
            store_chunk(conn, uuid.uuid4(), {"type": group, "event": "e", "title": "t", "customer_id": customer},
                        [self.users[u] for u in sorted(users)], [self.users[u] for u in hidden])
            conn.commit()
        finally:
            conn.close()

    def insert(self, user, customer, group, read, deleted, hidden, old):
        at = "2024-01-01T00:00:00Z"
        created = datetime.datetime.now(datetime.timezone.utc) - (OLD if old else datetime.timedelta())
        insert_notification(self.db, self.users[user], customer_id=customer, type=group, read_at=at if read else None,
                            deleted_at=at if deleted else None, in_app=not hidden, created_at=created)

    def read(self, user, k, read, claim):
        row = self.pick(user, k)
        if row:
            headers = bearer(self.users[user], customers=[C1] if claim else None)
            r = self.client.patch(f"/v1/notifications/{row[0]}/read", headers=headers, json={"read": read})
            assert r.status_code in (200, 404)

    def delete(self, user, k):
        row = self.pick(user, k)
        if row:
            r = self.client.delete(f"/v1/notifications/{row[0]}", headers=bearer(self.users[user]))
            assert r.status_code in (204, 404)

    def read_all(self, user, customer, group, before, claim):
        body = {key: value for key, value in (("customer_id", customer and str(customer)), ("group", group)) if value}
        row = self.pick(user, before) if before is not None else None
        if row:
            body["before"] = row[1].isoformat()
        headers = bearer(self.users[user], customers=[C1, C2] if claim else None)
        assert self.client.post("/v1/notifications/read-all", headers=headers, json=body).status_code == 200

    def move(self, user, k, to, customer):
        row = self.pick(user, k)
        if row:
            with self.db.cursor() as cur:
                cur.execute("UPDATE notifications SET user_id = %s, customer_id = %s, trigger_id = NULL WHERE id = %s",
                            (self.users[to], customer, row[0]))

    def purge(self):
        purge(self.app)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(OPERATIONS, min_size=1, max_size=15))
def test_random_operations_keep_the_counters_exact(app, client, db, operations):
    """Each example has users of its own; every counter of the table is compared after every step."""
    inbox = Inbox(app, client, db, [uuid.uuid4() for _ in range(3)])
    for name, *args in operations:
        getattr(inbox, name)(*args)
        assert_exact(db)
    for user_id in inbox.users:
        assert client.get("/v1/notifications/unread-count", headers=bearer(user_id)).get_json() == \
            expected_payload(db, user_id)


# ------------------------------------------------------------------------- concurrent writers

@pytest.mark.timeout(180)
def test_concurrent_writers_end_exact_without_deadlock(app, db):
    """Fan-outs to the same users in opposite orders (two dispatch workers, if nothing serialised
    them), read-alls, single reads and a retention purge, each thread on its own connection: they
    lock counter rows in one order, so none waits for another in a cycle, and the totals add up.

    Each transaction changes notifications in one statement, as every path of the service does
    (see migrations_sql/0011 for why that matters)."""
    from app.history import retention
    from app.dispatch.repository import store_chunk
    from app.notifications import repository
    users = [uuid.uuid4() for _ in range(300)]
    now = datetime.datetime.now(datetime.timezone.utc)
    for n, user_id in enumerate(users):   # old unread tasks, for the purge to delete meanwhile
        insert_notification(db, user_id, type="task", event="task_due", customer_id=(None, C1)[n % 2],
                            created_at=now - OLD)
    errors, start = [], threading.Barrier(6)

    def worker(work):
        conn = psycopg2.connect(app.config["DATABASE_URL"])
        try:
            start.wait()
            work(conn, random.Random(id(work)))
        except Exception as exc:   # a DeadlockDetected lands here
            errors.append(exc)
        finally:
            conn.close()

    def fan_out(reverse):
        def work(conn, rnd):
            for n in range(8):
                order = sorted(users, reverse=reverse) if n % 2 == 0 else rnd.sample(users, len(users))
                body = {"type": ("chat", "task")[n % 2], "event": "e", "title": "t",
                        "customer_id": (None, C1, C2)[n % 3]}
                store_chunk(conn, uuid.uuid4(), body, order, rnd.sample(users, 30))
                conn.commit()
        return work

    def read_alls(conn, rnd):
        for _ in range(150):
            repository.mark_all_read(conn, rnd.choice(users), customer_id=rnd.choice([None, C1, C2]),
                                     group=rnd.choice([None, "chat", "task"]))
            conn.commit()

    def single_reads(conn, rnd):
        for _ in range(150):
            with conn.cursor() as cur:
                cur.execute("SELECT id, user_id FROM notifications WHERE user_id = %s", (rnd.choice(users),))
                found = cur.fetchall()
            for notification_id, user_id in found[:3]:   # one transaction each, as PATCH /read makes it
                repository.set_read(conn, user_id, notification_id, rnd.random() < 0.6)
                conn.commit()

    purged = []

    def purge_in_batches(conn, rnd):
        with app.app_context():
            purged.append(retention.purge(conn, app.config["DOMAIN"], batch=25)["task"])

    threads = [threading.Thread(target=worker, args=(work,)) for work in
               (fan_out(False), fan_out(True), read_alls, single_reads, single_reads, purge_in_batches)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    assert not any(thread.is_alive() for thread in threads)
    assert [f"{type(e).__name__}: {e}" for e in errors] == []
    assert_exact(db)
    assert purged and purged[0] > 0          # the purge ran concurrently with the rest
    # it skips rows other transactions hold (SKIP LOCKED): its next turn deletes them
    assert purge(app)["task"] == len(users) - purged[0]
    assert_exact(db)
