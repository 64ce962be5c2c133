"""Compaction (app/history/compaction.py, migration 0030): a closed partition rewritten in user
order while it serves. Real PostgreSQL; the service's own functions and endpoints; the changes
made during the copy through the API.
"""
import contextlib
import threading
import uuid

import psycopg2
import pytest

from testkit.identity import bearer
from testkit.rows import insert_notification, rows, scalar

from .test_partitions import listing, move_sequence_to

PER_USER = 30
CONTENT = "x" * 700               # about ten rows a heap page


def _pages(owner_conn, table, user):
    """Heap pages holding `user`'s rows (None: every row) of partition `table` (read as the owner: the service's role
    reads partitions through `notifications` only)."""
    found = scalar(owner_conn, f"SELECT count(DISTINCT (ctid::text::point)[0]) FROM {table}"
                   " WHERE user_id = coalesce(%s, user_id)", user)
    owner_conn.commit()
    return found


def _interleaved_closed_partition(db, owner_conn, users):
    """PER_USER notifications of each user stored in turn (a user's rows on as many pages as there
    are of them, as the sequence spreads them), half of them read, then the sequence moved past
    their partition and one more stored; returns the partition's name."""
    ahead = [p for p in listing(owner_conn) if p[3]][1]          # a partition of its own, from its start
    move_sequence_to(owner_conn, ahead[1])
    for i in range(PER_USER):
        for user in users:
            insert_notification(db, user, content=CONTENT, read_at=None if i % 2 else row_time(i))
    move_sequence_to(owner_conn, ahead[2] + 1)
    insert_notification(db, users[0])
    return ahead[0]


def row_time(i):
    import datetime
    return datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=i)


@contextlib.contextmanager
def service_connection(clean):
    """A connection as the service's role, as a worker's pass has."""
    conn = psycopg2.connect(clean["DATABASE_URL"])
    try:
        yield conn
    finally:
        conn.close()


def _state(db):
    return rows(db, "SELECT * FROM notifications ORDER BY seq")


def _indexes(db, table):
    return sorted(r["indexname"] for r in rows(db, "SELECT indexname FROM pg_indexes WHERE tablename = %s", table))


def test_a_closed_partition_is_rewritten_in_user_order_while_it_serves(app, db, owner_conn, clean):
    """Each user's rows of the month end up together (a page of the inbox reads a few heap pages,
    not one per notification), every row as it is at the swap — the read and the delete made
    through the API during the copy included, and a row stored late — under the partition's and
    its indexes' names."""
    from app.history import compaction
    users = [uuid.uuid4() for _ in range(10)]      # more than a heap page holds of them
    part = _interleaved_closed_partition(db, owner_conn, users)
    client = app.test_client()
    before_pages = [_pages(owner_conn, part, user) for user in users]
    assert min(before_pages) >= PER_USER - 1                 # one page per notification, near enough
    index_names = _indexes(db, part)
    inbox_before = client.get("/v1/notifications?limit=100", headers=bearer(users[1])).get_json()
    unread_id = next(n["id"] for n in inbox_before["items"] if not n["read_at"])
    gone_id = inbox_before["items"][-1]["id"]
    expected = {}

    lo = [p for p in listing(owner_conn) if p[0] == part][0][1]

    def during_copy():
        assert client.patch(f"/v1/notifications/{unread_id}/read", json={},
                            headers=bearer(users[1])).status_code == 200
        assert client.delete(f"/v1/notifications/{gone_id}", headers=bearer(users[1])).status_code == 204
        # a row stored late: its transaction took a `seq` of the range before the sequence moved on
        expected["late"] = insert_notification(db, users[2], seq=lo + 100_000)
        expected["rows"] = _state(db)
        expected["inbox"] = [client.get("/v1/notifications?limit=100", headers=bearer(u)).get_json() for u in users]

    with service_connection(clean) as conn:           # the requests during the copy have their own
        assert compaction.pending(conn)[0] == part          # newest first
        assert compaction.compact(conn, part, after_copy=during_copy) == PER_USER * len(users)   # copied

    assert _state(db) == expected["rows"]
    assert expected["late"]["id"] in [r["id"] for r in expected["rows"]]
    assert [client.get("/v1/notifications?limit=100", headers=bearer(u)).get_json() for u in users] == expected["inbox"]
    assert [n["id"] for n in expected["inbox"][1]["items"]].count(gone_id) == 0
    after_pages = [_pages(owner_conn, part, user) for user in users]
    per_page = len(expected["rows"]) / _pages(owner_conn, part, None)
    # a user's rows in as few pages as they fill, one more where they straddle two, one more for
    # the rows changed during the copy (written again at the end)
    assert max(after_pages) <= -(-PER_USER // per_page) + 2, (before_pages, after_pages, per_page)
    assert _indexes(db, part) == index_names
    assert part in [p[0] for p in listing(owner_conn)]
    assert scalar(db, "SELECT count(*) FROM pg_tables WHERE tablename ~ '_(un)?sorted$'") == 0
    assert scalar(db, "SELECT count(*) FROM pg_trigger WHERE tgname = 'history_compact_log'") == 0
    assert scalar(db, "SELECT rows FROM history_compacted WHERE name = %s AND done_at IS NOT NULL", part) == PER_USER * len(users)
    with service_connection(clean) as conn:
        assert part not in compaction.pending(conn)


def test_a_busy_table_puts_the_swap_off_and_a_pass_that_died_is_taken_up_again(make_app, db, owner_conn, clean):
    """The swap waits at most 50 ms for its lock (requests queue behind a waiting one): a table held
    by a long transaction makes it give up, the partition serving as before. A pass that died
    after its copy is started over by the next one; one that died after its swap only has the old
    table dropped. The worker's thread runs the passes."""
    from app.history import compaction
    app = make_app(HISTORY_COMPACT_INTERVAL_SECONDS="0.2")
    users = [uuid.uuid4() for _ in range(2)]
    part = _interleaved_closed_partition(db, owner_conn, users)
    expected = _state(db)
    reader = psycopg2.connect(clean["DATABASE_URL"])
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM notifications")       # holds its lock until rollback
        with service_connection(clean) as conn, pytest.raises(psycopg2.errors.LockNotAvailable):
            compaction.compact(conn, part, attempts=2, pause=0.05)
    finally:
        reader.rollback()
        reader.close()
    assert _state(db) == expected
    assert scalar(db, "SELECT done_at FROM history_compacted WHERE name = %s", part) is None

    with owner_conn.cursor() as cur:                   # a pass copies, then its process dies
        cur.execute("SELECT history_partition_compact_begin(%s::regclass)", (part,))
        cur.execute("SELECT history_partition_compact_copy(%s)", (part,))
    owner_conn.commit()
    insert_notification(db, users[1])
    with service_connection(clean) as conn:
        conn.cursor().execute("UPDATE notifications SET read_at = now() WHERE user_id = %s", (users[0],))
        conn.commit()
    expected = _state(db)
    stop = threading.Event()
    thread = compaction.schedule(app, stop)
    try:
        for _ in range(100):
            if scalar(db, "SELECT done_at IS NOT NULL FROM history_compacted WHERE name = %s", part):
                break
            stop.wait(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert _state(db) == expected
    assert max(_pages(owner_conn, part, user) for user in users) < PER_USER // 2

    with owner_conn.cursor() as cur:                   # a pass swaps, then its process dies
        cur.execute("DELETE FROM history_compacted")
        cur.execute("SELECT history_partition_compact_begin(%s::regclass)", (part,))
        cur.execute("SELECT history_partition_compact_copy(%s)", (part,))
        cur.execute("SELECT history_partition_compact_swap(%s)", (part,))
    owner_conn.commit()
    assert scalar(db, "SELECT to_regclass(%s) IS NOT NULL", part + "_unsorted")
    with service_connection(clean) as conn:
        assert compaction.compact(conn, part) == 0               # only the old table dropped
    assert scalar(db, "SELECT to_regclass(%s)", part + "_unsorted") is None
    assert scalar(db, "SELECT done_at IS NOT NULL FROM history_compacted WHERE name = %s", part)
    assert _state(db) == expected


def test_the_partition_holding_the_sequence_is_never_compacted(db, owner_conn, clean):
    from app.history import compaction
    current = [p for p in listing(owner_conn) if p[3]][0][0]
    with service_connection(clean) as conn:
        assert current not in compaction.pending(conn)
    with owner_conn.cursor() as cur, pytest.raises(psycopg2.errors.RaiseException, match="never compacted"):
        cur.execute("SELECT history_partition_compact_begin(%s::regclass)", (current,))


def test_operators_compact_from_the_command_line(app, db, owner_conn):
    """`flask history compact`: every closed partition not compacted yet, listed with its rows;
    run again, nothing left to do."""
    users = [uuid.uuid4() for _ in range(2)]
    part = _interleaved_closed_partition(db, owner_conn, users)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["history", "compact"])
    assert result.exit_code == 0, result.output
    assert f"{part}\t{PER_USER * len(users)}" in result.output.splitlines()
    assert max(_pages(owner_conn, part, user) for user in users) < PER_USER // 2
    again = runner.invoke(args=["history", "compact"])
    assert again.exit_code == 0 and again.output == "0 partition(s) compacted\n"


def test_the_metrics_show_the_partitions_waiting_for_a_compaction(make_app, db, owner_conn):
    """`notif_history_uncompacted_partitions`: the closed partitions no pass has compacted yet, 0
    once one has run."""
    from app.history import compaction
    app = make_app()
    part = _interleaved_closed_partition(db, owner_conn, [uuid.uuid4()])
    client = app.test_client()

    def waiting():
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith("notif_history_uncompacted_partitions "):
                return float(line.split()[1])
    assert waiting() >= 1
    assert part in compaction.compact_pending(app)
    assert waiting() == 0
