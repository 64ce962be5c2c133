"""The partitioned history (app/history/, migration 0026): partitions by ranges of `seq`, made ahead
of the sequence; retention that drops a whole partition with its counters and dependents; the
inbox and the replay on it. Real PostgreSQL; the service's own functions and endpoints.
"""
import datetime
import json
import uuid

import pytest
import yaml

from testkit.config_files import REPO_ROOT
from testkit.identity import bearer
from testkit.rows import insert_delivery, insert_notification, scalar

from .conftest import DEFAULT_SPAN
OLD = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=800)


def partition_of(db, notification_id):
    return scalar(db, "SELECT tableoid::regclass::text FROM notifications WHERE id = %s", notification_id)


def listing(conn):
    from app.history import partitions
    found = partitions.listing(conn)
    conn.commit()
    return found


def move_sequence_to(owner_conn, value):
    """As the schema's owner (the service's role may only take values)."""
    with owner_conn.cursor() as cur:
        cur.execute("SELECT setval('notifications_seq_seq', %s)", (value,))
    owner_conn.commit()


def test_a_new_database_is_partitioned_by_seq_with_partitions_ahead(db, owner_conn):
    """notifications by `seq`; deliveries and attempts by their notification's, on the same ranges."""
    assert scalar(db, "SELECT pg_get_partkeydef('notifications'::regclass)") == "RANGE (seq)"
    for table in ("deliveries", "delivery_attempts"):
        assert scalar(db, "SELECT pg_get_partkeydef(%s::regclass)", table) == "RANGE (notification_seq)"
        assert scalar(db, "SELECT array_agg((lo, hi) ORDER BY lo)::text FROM history_partitions(%s)", table) == \
            scalar(db, "SELECT array_agg((lo, hi) ORDER BY lo)::text FROM history_partitions('notifications')")
    parts = listing(owner_conn)
    current = scalar(db, "SELECT history_current_seq()")
    assert len(parts) >= 3 and parts[-1][2] > current + DEFAULT_SPAN          # two spans ahead, at least
    assert all(lo == prev_hi for (_, lo, _, _), (_, _, prev_hi, _) in zip(parts[1:], parts))   # no gap


def test_partitions_are_made_ahead_and_a_trigger_is_stored_across_a_boundary(make_app, db, owner_conn):
    """The worker's `ensure` (here called as the relay calls it) keeps two spans ahead: a trigger
    whose users' rows straddle two partitions is stored, listed and counted as on one table."""
    from app import db as app_db
    from app.dispatch.drain import drain
    from app.history import partitions
    app = make_app(HISTORY_PARTITION_ROWS="1000")
    top = listing(owner_conn)[-1][2]
    move_sequence_to(owner_conn, top - 10)
    with app.app_context(), app_db.connection() as conn:
        made = partitions.ensure(conn, 1000)
    assert made == 2                     # [top, top+1000), [top+1000, top+2000): two spans past the sequence
    users = [uuid.uuid4() for _ in range(25)]
    client = app.test_client()
    from testkit.api import trigger
    trigger(client, users)
    with app.app_context():
        assert drain(app) == 1
    where = {partition_of(db, nid) for (nid,) in _ids(db)}
    assert len(where) == 2
    for user in users:
        page = client.get("/v1/notifications", headers=bearer(user)).get_json()
        assert page["total"] == 1 and client.get("/v1/notifications/unread-count",
                                                 headers=bearer(user)).get_json()["unread"] == 1


def _ids(db):
    with db.cursor() as cur:
        cur.execute("SELECT id FROM notifications")
        return cur.fetchall()


def test_the_inbox_page_and_the_replay_read_the_newest_partition_only(app, db, owner_conn):
    """An inbox page (ORDER BY seq DESC LIMIT) stops in the newest partition holding enough rows;
    a replay after a cursor prunes the partitions before it at run time (generic plans, as the
    pool's prepared statements run)."""
    user = uuid.uuid4()
    old = [insert_notification(db, user) for _ in range(3)]
    top = [p for p in listing(owner_conn) if p[3]][0][2]      # the end of the partition being filled
    move_sequence_to(owner_conn, top + 5)
    new = [insert_notification(db, user) for _ in range(60)]
    assert partition_of(db, old[0]["id"]) != partition_of(db, new[0]["id"])
    with db.cursor() as cur:
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute("PREPARE page(uuid) AS SELECT seq FROM notifications WHERE user_id = $1"
                    " AND deleted_at IS NULL AND in_app ORDER BY seq DESC LIMIT 50")
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, FORMAT JSON) EXECUTE page(%s)", (user,))
        page = cur.fetchone()[0][0]["Plan"]
        cur.execute("PREPARE replay(uuid, bigint) AS SELECT seq FROM notifications WHERE user_id = $1"
                    " AND seq > $2 ORDER BY seq LIMIT 501")
        cur.execute("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, FORMAT JSON) EXECUTE replay(%s, %s)",
                    (user, new[10]["seq"]))
        replay = cur.fetchone()[0][0]["Plan"]
    older, newer = partition_of(db, old[0]["id"]), partition_of(db, new[0]["id"])
    # newest first (the partitions ahead, empty, cost a probe each); the older rows are never read
    assert newer in _scanned(page) and older not in _scanned(page), json.dumps(page, indent=1)
    assert newer in _scanned(replay) and older not in _scanned(replay), json.dumps(replay, indent=1)
    assert _pruned(replay) >= 1, json.dumps(replay, indent=1)          # the older ones pruned at run time


def _pruned(plan):
    """Partitions the plan's Append nodes removed at run time (above them a Limit, and a Sort or not,
    as the statistics of the day make it)."""
    return plan.get("Subplans Removed", 0) + sum(_pruned(child) for child in plan.get("Plans", []))


def _scanned(plan):
    """The partitions a plan's scans actually read (pruned or never started ones are not)."""
    own = {plan["Relation Name"]} if "Scan" in plan["Node Type"] and plan.get("Actual Loops", 0) > 0 else set()
    return own.union(*(_scanned(child) for child in plan.get("Plans", [])))


@pytest.fixture
def every_group_kept(tmp_path):
    """notifications.yaml as shipped, with a retention for every group (partitions drop only then)."""
    data = yaml.safe_load((REPO_ROOT / "notifications.yaml").read_text())
    for name, group in data["groups"].items():
        group["retention_days"] = 365 if name == "task" else 730
    path = tmp_path / "notifications.all-kept.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _old_partition_with_dependents(db, owner_conn, user):
    """Notifications 800 days old in the first partition (two unread, one read), a delivery, an
    escalation step and a callback of one of them, then the sequence moved past that partition and
    a new notification stored; returns (old rows, new row, old partition's name)."""
    old = [insert_notification(db, user, created_at=OLD, type="task", event="task_due") for _ in range(2)]
    old.append(insert_notification(db, user, created_at=OLD, read_at=OLD, type="task", event="task_due"))
    nid = old[0]["id"]
    with db.cursor() as cur:
        insert_delivery(db, nid)
        cur.execute("INSERT INTO escalations (notification_id, step, user_id, channels, due_at)"
                    " VALUES (%s, 1, %s, '{sms}', now())", (nid, user))
        cur.execute("INSERT INTO ack_callbacks (id, notification_id, event, url)"
                    " VALUES (gen_random_uuid(), %s, 'ack', 'https://example.com/cb')", (nid,))
    first = partition_of(db, nid)
    hi = [p for p in listing(owner_conn) if p[0] == first][0][2]
    move_sequence_to(owner_conn, hi + 1)
    new = insert_notification(db, user, type="task", event="task_due",
                              created_at=datetime.datetime.now(datetime.timezone.utc))
    return old, new, first


def test_retention_drops_a_partition_past_every_groups_retention_with_its_counters_and_dependents(
        make_app, db, owner_conn, every_group_kept):
    from app.history import retention
    app = make_app(NOTIFICATIONS_CONFIG=every_group_kept)
    user = uuid.uuid4()
    old, new, first = _old_partition_with_dependents(db, owner_conn, user)
    client = app.test_client()
    assert client.get("/v1/notifications/unread-count", headers=bearer(user)).get_json()["unread"] == 3
    deleted = retention.purge_exclusive(app)
    assert deleted["(partitions)"] == 3
    for table in ("notifications", "deliveries", "delivery_attempts"):     # the range of all three dropped
        assert scalar(db, "SELECT to_regclass(%s)", first.replace("notifications", table, 1)) is None, table
    assert scalar(db, "SELECT count(*) FROM history_detached") == 0
    page = client.get("/v1/notifications", headers=bearer(user)).get_json()
    assert [n["id"] for n in page["items"]] == [str(new["id"])]
    assert client.get("/v1/notifications/unread-count", headers=bearer(user)).get_json()["unread"] == 1
    for table in ("deliveries", "escalations", "ack_callbacks"):
        assert scalar(db, f"SELECT count(*) FROM {table}") == 0, table
    with db.cursor() as cur:
        cur.execute("SELECT target_type, target_id, change FROM audit_log WHERE action = 'retention.drop_partition'")
        drops = cur.fetchall()
    assert ("partition", first, {"deleted": 3, "older_than_days": 730}) in drops
    assert all(change["deleted"] == 0 for _, name, change in drops if name != first)   # empty ones below


def test_partitions_stay_while_a_group_keeps_its_notifications_for_ever(app, db, owner_conn):
    """The shipped notifications.yaml keeps chat, payment and security for ever: old task rows are
    deleted one by one (as before partitioning), no partition is dropped."""
    from app.history import retention
    user = uuid.uuid4()
    old, new, first = _old_partition_with_dependents(db, owner_conn, user)
    deleted = retention.purge_exclusive(app)
    assert "(partitions)" not in deleted and deleted["task"] == 3
    assert scalar(db, "SELECT to_regclass(%s) IS NOT NULL", first)
    for table in ("deliveries", "escalations", "ack_callbacks"):       # migration 0025's trigger
        assert scalar(db, f"SELECT count(*) FROM {table}") == 0, table
    assert scalar(db, "SELECT count(*) FROM notifications") == 1


def test_a_busy_table_puts_the_detach_off_and_a_dead_detacher_is_finished_later(
        make_app, db, owner_conn, every_group_kept, clean):
    """A DETACH waits at most 50 ms for its lock (requests queue behind a waiting one): a table
    held by a long transaction makes it give up, nothing changed. A partition detached by a process
    that died before dropping it is finished by the next purge."""
    import psycopg2
    from app import db as app_db
    from app.history import partitions, retention
    app = make_app(NOTIFICATIONS_CONFIG=every_group_kept)
    user = uuid.uuid4()
    old, new, first = _old_partition_with_dependents(db, owner_conn, user)
    reader = psycopg2.connect(clean["DATABASE_URL"])
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM notifications")       # holds its lock until rollback
        with app.app_context(), app_db.connection() as conn:
            assert partitions.detach(conn, first, attempts=3, pause=0.05) is False
        assert scalar(db, "SELECT count(*) FROM history_detached") == 0
        assert first in [p[0] for p in listing(owner_conn)]
    finally:
        reader.rollback()
        reader.close()
    with owner_conn.cursor() as cur:                               # detached, then the process died
        cur.execute("SELECT history_partition_detach(%s::regclass)", (first,))
    owner_conn.commit()
    assert scalar(db, "SELECT count(*) FROM notifications") == 1
    client = app.test_client()
    assert client.get("/v1/notifications/unread-count", headers=bearer(user)).get_json()["unread"] == 3
    deleted = retention.purge_exclusive(app)
    assert deleted["(partitions)"] == 3
    assert scalar(db, "SELECT to_regclass(%s)", first) is None
    assert client.get("/v1/notifications/unread-count", headers=bearer(user)).get_json()["unread"] == 1


def test_a_finish_takes_the_counters_off_in_steps_and_one_cut_short_is_completed_exactly(
        make_app, db, owner_conn, every_group_kept):
    """A month's unread notifications leave the counters a few users per transaction (0029), each
    step recording how far it got: a process that dies between steps leaves counters that are
    right for the users done, and the next pass takes off the rest once — every user's count
    exact, the audit's count of the dropped rows exact."""
    from app.history import retention
    app = make_app(NOTIFICATIONS_CONFIG=every_group_kept)
    users = sorted(uuid.uuid4() for _ in range(5))
    old, new, first = _old_partition_with_dependents(db, owner_conn, users[0])
    for user in users[1:]:                          # the old partition: two unread, one read each
        with owner_conn.cursor() as cur:
            cur.execute("SELECT setval('notifications_seq_seq', (SELECT max(seq) FROM %s))" % first)
        owner_conn.commit()
        for read_at in (None, None, OLD):
            insert_notification(db, user, created_at=OLD, read_at=read_at, type="task", event="task_due")
    with owner_conn.cursor() as cur:
        cur.execute("SELECT setval('notifications_seq_seq', %s)", (new["seq"],))
        cur.execute("SELECT history_partition_detach(%s::regclass)", (first,))
    owner_conn.commit()
    client = app.test_client()

    def unread(user):
        return client.get("/v1/notifications/unread-count", headers=bearer(user)).get_json()["unread"]

    assert [unread(user) for user in users] == [3, 2, 2, 2, 2]
    with owner_conn.cursor() as cur:               # two steps of two users, then the process dies
        for _ in range(2):
            cur.execute("SELECT history_partition_uncount(%s, 2)", (first,))
            assert cur.fetchone()[0] == 2
            owner_conn.commit()
    assert [unread(user) for user in users] == [1, 0, 0, 0, 2]
    assert scalar(db, "SELECT held FROM history_detached WHERE name = %s", first) == 12
    deleted = retention.purge_exclusive(app)
    assert deleted["(partitions)"] == 15
    assert [unread(user) for user in users] == [1, 0, 0, 0, 0]
    assert scalar(db, "SELECT to_regclass(%s)", first) is None
    assert scalar(db, "SELECT count(*) FROM history_detached") == 0
    assert scalar(db, "SELECT (change->>'deleted')::int FROM audit_log WHERE action = 'retention.drop_partition'"
                      " AND target_id = %s", first) == 15


def test_the_partition_holding_the_sequence_is_never_detached(db, owner_conn):
    import psycopg2
    current = [p for p in listing(owner_conn) if p[3]][0][0]
    with owner_conn.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException, match="never detached"):
        cur.execute("SELECT history_partition_detach(%s::regclass)", (current,))
    owner_conn.rollback()


def test_the_metrics_show_how_much_of_the_sequence_the_partitions_still_take(make_app, db, owner_conn):
    """`notif_history_seq_headroom`: an operator alerts when it falls below one partition's span
    (no worker has made partitions ahead); after `ensure` it is two spans or more again."""
    from app import db as app_db
    from app.history import partitions
    app = make_app(HISTORY_PARTITION_ROWS="1000")
    client = app.test_client()

    def headroom():
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith("notif_history_seq_headroom "):
                return float(line.split()[1])
    top = listing(owner_conn)[-1][2]
    move_sequence_to(owner_conn, top - 10)
    assert headroom() == 10
    with app.app_context(), app_db.connection() as conn:
        partitions.ensure(conn, 1000)
    assert headroom() >= 2000


def test_every_delivery_and_attempt_carries_its_notifications_seq(app, db):
    """What partitions `deliveries` and `delivery_attempts` on the ranges of `notifications`
    (migrations 0027, 0028): each row names its notification's `seq`."""
    from app.dispatch.drain import drain
    from testkit.api import trigger
    trigger(app.test_client(), [uuid.uuid4() for _ in range(3)])     # chat: email, skipped (no address)
    with app.app_context():
        assert drain(app) == 1
    assert scalar(db, "SELECT count(*) FROM deliveries") == 3
    assert scalar(db, "SELECT count(*) FROM delivery_attempts") == 3
    assert scalar(db, "SELECT count(*) FROM deliveries d JOIN notifications n ON n.id = d.notification_id"
                      " WHERE d.notification_seq = n.seq") == 3
    assert scalar(db, "SELECT count(*) FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id"
                      " WHERE a.notification_seq = d.notification_seq") == 3


def test_the_inbox_is_planned_once_per_connection_and_run_with_a_generic_plan(app, db):
    """Planning a page over every partition and its indexes costs more than running it
    (docs/history.md): the inbox's statement (its page and counts in one) is prepared on the
    connection the first time and run with a generic plan after, whoever asks; the answers stay
    each user's own."""
    import psycopg2
    from app.notifications.repository import list_inbox
    users = [uuid.uuid4() for _ in range(3)]
    for user in users:
        for _ in range(2):
            insert_notification(db, user)
    conn = psycopg2.connect(app.config["DATABASE_URL"])
    try:
        for user in users * 2:
            items, total, unread = list_inbox(conn, user, limit=10)
            assert {i["user_id"] for i in items} == {user} and (total, unread) == (2, 2)
            conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT sum(generic_plans), sum(custom_plans), count(*) FROM pg_prepared_statements")
            assert cur.fetchone() == (6, 0, 1)         # one statement, six times
    finally:
        conn.close()
