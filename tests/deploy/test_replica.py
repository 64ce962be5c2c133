"""Reads from a real streaming replica (issue 24 item 3, app/replica.py).

This module starts its own primary (devtools/postgres_server.py: initdb + pg_ctl, wal_level=replica
by default) with this run's kind of database migrated on it, then a hot standby made by
`pg_basebackup -R` from it, streaming. To make a replica visibly behind, a test pauses its replay
(`pg_wal_replay_pause()`, as the superuser on the standby): what the user then sees tells where a
read went. Each test uses users of its own; replay is resumed after each.
"""
import os
import re
import uuid

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from testkit.apps import app_factory
from testkit.database import Database, as_app_role, service_env, with_dbname
from testkit.identity import SERVICE, bearer
from testkit.processes import wait_until
from testkit.rows import insert_notification

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(primary server, standby server, the database's owner URL on the primary)."""
    from devtools.postgres_server import PostgresServer, find_binaries
    binaries = find_binaries()
    if binaries is None or not (binaries / "pg_basebackup").exists():
        if os.environ.get("CI"):   # .ci/run installs Debian's PostgreSQL: the test must run there
            pytest.fail("no PostgreSQL binaries with pg_basebackup")
        pytest.skip("no PostgreSQL binaries with pg_basebackup on this machine")
    primary, standby = PostgresServer(), PostgresServer()
    database = None
    try:
        primary.start()
        database = Database(primary.url(), prefix="notif_replica")
        standby._run("pg_basebackup", "-D", str(standby.data), "-h", "127.0.0.1", "-p", str(primary.port),
                     "-U", "postgres", "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
        standby.initialised = True
        standby.start()
        yield primary, standby, database.url
    finally:
        if database is not None:
            database.admin.close()
        standby.destroy()
        primary.destroy()


@pytest.fixture
def primary_db(cluster):
    conn = psycopg2.connect(cluster[2])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def standby_admin(cluster):
    """The standby as its superuser: pausing and resuming replay; replay resumed at the end."""
    _, standby, url = cluster
    conn = psycopg2.connect(with_dbname(on_port(url, standby.port), "postgres"))
    conn.autocommit = True
    yield conn
    if standby.running():
        with conn.cursor() as cur:
            cur.execute("SELECT pg_wal_replay_resume()")
    conn.close()


def on_port(url, port):
    params = parse_dsn(url)
    params["port"] = str(port)
    return make_dsn(**params)


def replica_url(cluster):
    _, standby, url = cluster
    return as_app_role(on_port(url, standby.port))


@pytest.fixture
def replica_app(cluster, redis_proc):
    """replica_app(**settings): an app on the primary with DATABASE_REPLICA_URL set; pools closed after."""
    env = service_env(cluster[2], redis_proc.url, REDIS_PREFIX=f"notif-replica-{uuid.uuid4().hex[:6]}:",
                      DATABASE_REPLICA_URL=replica_url(cluster))
    with app_factory(env) as factory:
        yield factory


def pause(standby_admin):
    with standby_admin.cursor() as cur:
        cur.execute("SELECT pg_wal_replay_pause()")


def resume(standby_admin):
    with standby_admin.cursor() as cur:
        cur.execute("SELECT pg_wal_replay_resume()")


def on_replica(cluster, notification_id):
    """Wait until the standby has replayed the notification's row."""
    conn = psycopg2.connect(replica_url(cluster))
    try:
        def there():
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM notifications WHERE id = %s", (notification_id,))
                return cur.fetchone() is not None
        wait_until(there, timeout=15, message="the row on the replica")
    finally:
        conn.close()


def replica_behind(cluster, primary_db, standby_admin, user_id, replicated, not_yet):
    """Store `replicated` for the user, wait for the replica to have it, pause its replay, store
    `not_yet`: (the two rows)."""
    first = insert_notification(primary_db, user_id, title=replicated)
    on_replica(cluster, first["id"])
    pause(standby_admin)
    return first, insert_notification(primary_db, user_id, title=not_yet)


def titles(client, user_id):
    answer = client.get("/v1/notifications", headers=bearer(user_id))
    assert answer.status_code == 200, answer.text
    return [item["title"] for item in answer.json["items"]]


def reads(client, target, reason):
    """notif_replica_reads_total{target, reason} as /metrics shows it (0 when absent)."""
    text = client.get("/metrics").text
    found = re.search(rf'notif_replica_reads_total{{reason="{reason}",target="{target}"}} ([0-9.e+]+)', text)
    return float(found.group(1)) if found else 0.0


def test_inbox_counts_and_stats_come_from_the_replica(cluster, replica_app, primary_db, standby_admin):
    client = replica_app(REPLICA_MAX_LAG_SECONDS="60").test_client()
    user_id = uuid.uuid4()
    replica_behind(cluster, primary_db, standby_admin, user_id, "replicated", "not yet replicated")

    assert titles(client, user_id) == ["replicated"]                 # the replica's answer, within the bound
    counts = client.get("/v1/notifications/unread-count", headers=bearer(user_id)).json
    assert counts["unread"] == 1
    assert reads(client, "replica", "ok") >= 2
    stats = client.get("/v1/notifications/stats", headers=SERVICE,
                       query_string={"from": "2000-01-01T00:00:00Z", "to": "2000-12-31T00:00:00Z"})
    assert stats.status_code == 200, stats.text

    resume(standby_admin)
    wait_until(lambda: len(titles(client, user_id)) == 2, timeout=15, message="the replica catching up")


def test_a_users_own_change_is_read_back_at_once(cluster, replica_app, primary_db, standby_admin):
    client = replica_app(REPLICA_MAX_LAG_SECONDS="60").test_client()
    user_id, other = uuid.uuid4(), uuid.uuid4()
    mine = insert_notification(primary_db, user_id, title="mine")
    replica_behind(cluster, primary_db, standby_admin, other, "other's first", "other's second")

    marked = client.patch(f"/v1/notifications/{mine['id']}/read", headers=bearer(user_id))
    assert marked.status_code == 200, marked.text
    inbox = client.get("/v1/notifications", headers=bearer(user_id)).json
    assert inbox["items"][0]["read"] is True and inbox["unread"] == 0    # the primary's answer
    assert client.get("/v1/notifications/unread-count", headers=bearer(user_id)).json["unread"] == 0
    assert reads(client, "primary", "own_write") >= 2
    assert titles(client, other) == ["other's first"]                   # the others still read the replica

    resume(standby_admin)
    wait_until(lambda: _replica_read_count_grows(client), timeout=15, message="reads back on the replica")
    assert client.get("/v1/notifications", headers=bearer(user_id)).json["unread"] == 0


def _replica_read_count_grows(client):
    before = reads(client, "replica", "ok")
    client.get("/v1/notifications/unread-count", headers=bearer(uuid.uuid4()))
    return reads(client, "replica", "ok") > before


def test_a_lagging_replica_is_passed_over(cluster, replica_app, primary_db, standby_admin):
    client = replica_app(REPLICA_MAX_LAG_SECONDS="0.5").test_client()
    user_id = uuid.uuid4()
    replica_behind(cluster, primary_db, standby_admin, user_id, "first", "second")
    # Once the replica is over half a second behind, the primary answers: the newest is there.
    wait_until(lambda: titles(client, user_id) == ["second", "first"], timeout=15, message="the primary's answer")
    assert reads(client, "primary", "lagging") >= 1


def test_a_replica_down_is_passed_over_and_used_again_when_back(cluster, replica_app, primary_db):
    _, standby, _ = cluster
    client = replica_app(REPLICA_MAX_LAG_SECONDS="60").test_client()
    user_id = uuid.uuid4()
    first = insert_notification(primary_db, user_id, title="first")
    on_replica(cluster, first["id"])
    assert titles(client, user_id) == ["first"]
    standby.stop("immediate")
    try:
        insert_notification(primary_db, user_id, title="second")
        assert titles(client, user_id) == ["second", "first"]          # no error: the primary answers
        assert reads(client, "primary", "failed") + reads(client, "primary", "down") >= 1
        assert 'notif_replica_lag_seconds 1e+09' in client.get("/metrics").text
    finally:
        standby.start()
    wait_until(lambda: _replica_read_count_grows(client), timeout=20, message="reads back on the replica")
    assert titles(client, user_id) == ["second", "first"]


@pytest.mark.slow
def test_a_stream_replays_exactly_whether_or_not_the_replica_has_caught_up(
        cluster, primary_db, standby_admin, redis_proc, processes, streams):
    """A replay must hold everything stored before the stream subscribed: from a replica behind
    that, the stream would never see it (it was published before anyone listened)."""
    env = service_env(cluster[2], redis_proc.url, REDIS_PREFIX=f"notif-replica-{uuid.uuid4().hex[:6]}:",
                      DATABASE_REPLICA_URL=replica_url(cluster), REPLICA_MAX_LAG_SECONDS="60")
    web = processes.start_web(env)
    user_id = uuid.uuid4()
    first, second = replica_behind(cluster, primary_db, standby_admin, user_id, "first", "second")

    behind = streams(web, user_id, last_event_id=first["seq"])
    (event,) = behind.wait_events(1)                            # from the primary: the replica lacks it
    assert (event.seq, event.json()["title"]) == (second["seq"], "second")
    behind.close()

    resume(standby_admin)
    third = insert_notification(primary_db, user_id, title="third")
    on_replica(cluster, third["id"])
    caught_up = streams(web, user_id, last_event_id=second["seq"])
    (event,) = caught_up.wait_events(1)                         # from the replica
    assert (event.seq, event.json()["title"]) == (third["seq"], "third")
    text = web.get("/metrics").text
    assert re.search(r'notif_replica_reads_total{reason="catching_up",target="primary"} [1-9]', text), text
    assert re.search(r'notif_replica_reads_total{reason="ok",target="replica"} [1-9]', text), text


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_lag_bound_stops_start_up_naming_it(value):
    from app.config import load_settings
    from app.errors import ConfigError
    from testkit.identity import API_KEY, JWT_SECRET
    with pytest.raises(ConfigError, match="REPLICA_MAX_LAG_SECONDS"):
        load_settings(environ={"JWT_SECRET": JWT_SECRET, "API_KEYS": API_KEY, "DEVELOPMENT": "true",
                               "REPLICA_MAX_LAG_SECONDS": value})


def test_without_a_replica_or_a_pubsub_url_nothing_changes():
    """A fresh `./dev up` sets neither: every read is the primary's, pub/sub is REDIS_URL's."""
    from app.config import load_settings
    from testkit.identity import API_KEY, JWT_SECRET
    settings = load_settings(environ={"JWT_SECRET": JWT_SECRET, "API_KEYS": API_KEY, "DEVELOPMENT": "true",
                                      "REDIS_URL": "redis://127.0.0.1:6390/0"})
    assert settings["DATABASE_REPLICA_URL"] == "" and settings["PUBSUB_URL"] == "redis://127.0.0.1:6390/0"
