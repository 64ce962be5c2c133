"""Retention: notifications past their group's `retention_days` (task: 365 in notifications.yaml) are
deleted with their deliveries, in batches; audit rows stay; job, schedule and operator command."""
import datetime
import threading
import uuid

import psycopg2
import pytest

from testkit.rows import insert_delivery, insert_notification

DAY = datetime.timedelta(days=1)


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def ids(db, table="notifications"):
    with db.cursor() as cur:
        cur.execute(f"SELECT id FROM {table}")
        return {row[0] for row in cur.fetchall()}


def count(db, sql):
    with db.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.fixture
def aged(db, client):
    """Task notifications on both sides of the 365-day cut-off, old chat ones (no retention), deliveries,
    attempts and some audit history."""
    user = uuid.uuid4()
    expired = [insert_notification(db, user, type="task", event="task_due", created_at=now() - age)
               for age in (400 * DAY, 366 * DAY, 365 * DAY + datetime.timedelta(minutes=5))]
    kept = [insert_notification(db, user, type="task", event="task_due", created_at=now() - age)
            for age in (365 * DAY - datetime.timedelta(minutes=5), 10 * DAY)]
    kept += [insert_notification(db, user, type="chat", created_at=now() - 3000 * DAY)]
    with db.cursor() as cur:
        for row in expired + kept:
            delivery = insert_delivery(db, row["id"], status="failed")
            cur.execute("INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, started_at)"
                        " VALUES (%s, %s, 1, 'failed', now())", (delivery, row["seq"]))
    # some audited history about the rows that are about to go
    from testkit.identity import make_token
    headers = {"Authorization": f"Bearer {make_token(user)}"}
    for row in expired:
        assert client.patch(f"/v1/notifications/{row['id']}/read", headers=headers).status_code == 200
    return {"expired": {r["id"] for r in expired}, "kept": {r["id"] for r in kept}}


def run_job(app):
    from workers import jobs
    with app.app_context():
        return jobs.purge_expired()


def test_job_deletes_exactly_the_expired_rows_and_their_deliveries(app, db, aged):
    audit_before = count(db, "SELECT count(*) FROM audit_log")
    assert run_job(app) == {"task": 3}
    assert ids(db) == aged["kept"]
    assert count(db, "SELECT count(*) FROM deliveries") == 3
    assert count(db, "SELECT count(*) FROM delivery_attempts") == 3
    assert count(db, "SELECT count(*) FROM deliveries d LEFT JOIN notifications n ON n.id = d.notification_id"
                     " WHERE n.id IS NULL") == 0
    # the audit history of the deleted rows stays, plus one row saying what the purge did
    assert count(db, "SELECT count(*) FROM audit_log") == audit_before + 1
    with db.cursor() as cur:
        cur.execute("SELECT actor_type, actor_id, action, target_type, target_id, change FROM audit_log"
                    " ORDER BY id DESC LIMIT 1")
        actor_type, actor_id, action, target_type, target_id, change = cur.fetchone()
    assert (actor_type, actor_id, action, target_type, target_id) == ("system", "retention", "retention.purge",
                                                                     "group", "task")
    assert change["deleted"] == 3 and change["retention_days"] == 365
    # nothing left to do the second time
    assert run_job(app) == {"task": 0}
    assert ids(db) == aged["kept"]


def test_purge_goes_in_batches(app, db, aged):
    from app import db as app_db
    from app.history import retention
    seen = []
    with app.app_context(), app_db.connection() as conn:
        deleted = retention.purge(conn, app.config["DOMAIN"], batch=2, progress=seen.append)
    assert deleted == {"task": 3}
    assert seen == [2, 1]
    assert ids(db) == aged["kept"]
    assert count(db, "SELECT count(*) FROM audit_log WHERE action = 'retention.purge'") == 2


def test_audit_chain_still_verifies_after_a_purge(app, db, aged):
    run_job(app)
    result = app.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 0, result.output


def test_operator_command_shows_progress_and_deletes(app, db, aged):
    result = app.test_cli_runner().invoke(args=["retention", "purge", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "task\t3" in result.stdout and "3 notifications deleted" in result.stdout
    assert "purging" in result.stderr           # the progress bar goes to stderr
    assert ids(db) == aged["kept"]
    with db.cursor() as cur:
        cur.execute("SELECT DISTINCT actor_type FROM audit_log WHERE action = 'retention.purge'")
        assert cur.fetchall() == [("operator",)]


def test_dry_run_counts_and_keeps_everything(app, db, aged):
    before = ids(db)
    result = app.test_cli_runner().invoke(args=["retention", "purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "task\t3" in result.stdout and "3 notifications would be deleted" in result.stdout
    assert ids(db) == before


def test_one_purge_at_a_time(app, db, clean, aged):
    """A purge already running elsewhere (its lock held by another session): this one skips its turn."""
    from app.db import Locks
    other = psycopg2.connect(clean["DATABASE_URL"])
    try:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (Locks.RETENTION,))
        assert run_job(app) is None
        result = app.test_cli_runner().invoke(args=["retention", "purge"])
        assert result.exit_code == 1
        assert "another purge is running" in result.stderr
        assert aged["expired"] <= ids(db)
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (Locks.RETENTION,))
    finally:
        other.close()
    assert run_job(app) == {"task": 3}


def test_the_worker_schedule_purges_periodically(app, db, aged):
    from app.history import retention
    app.config["RETENTION_INTERVAL_SECONDS"] = 0.2
    stop = threading.Event()
    thread = retention.schedule(app, stop)
    try:
        deadline = now() + datetime.timedelta(seconds=10)
        while aged["expired"] & ids(db) and now() < deadline:
            threading.Event().wait(0.05)
        assert ids(db) == aged["kept"]
        # it keeps running: a row that expires later goes at a later turn
        late = insert_notification(db, uuid.uuid4(), type="task", event="task_due", created_at=now() - 500 * DAY)
        while late["id"] in ids(db) and now() < deadline:
            threading.Event().wait(0.05)
        assert late["id"] not in ids(db)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_groups_without_retention_are_never_purged(app, db):
    old = insert_notification(db, uuid.uuid4(), type="chat", created_at=now() - 10_000 * DAY)
    assert run_job(app) == {"task": 0}
    assert old["id"] in ids(db)
