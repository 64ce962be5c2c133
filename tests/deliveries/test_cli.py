"""`flask deliveries retry` cannot surprise: --since, --dry-run, stale urgent alerts skipped unless
--force, a confirmation above RETRY_CONFIRM_ABOVE. Through the CLI, against the real database and Redis."""
import datetime
import os
import pty
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from testkit.rows import insert_delivery, insert_notification
from devtools.services import REPO_ROOT

NOW = datetime.datetime.now(datetime.timezone.utc)
EMAIL, PHONE = "carol.customer@example.com", "+447700900123"


def add_failed(db, user, channel, age, group="chat", event="message_received"):
    created = datetime.datetime.now(datetime.timezone.utc) - age
    notification = insert_notification(db, user, type=group, event=event, created_at=created)
    return insert_delivery(db, notification["id"], user_id=user, channel=channel, status="failed", attempts=5)


@pytest.fixture
def failed(db):
    """Four failed deliveries of one user: chat ones fresh and old, a login alert fresh and stale."""
    user = uuid.uuid4()
    with db.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id, email, phone) VALUES (%s, %s, %s)", (user, EMAIL, PHONE))
    minutes, hours, days = (lambda n, u=u: datetime.timedelta(**{u: n}) for u in ("minutes", "hours", "days"))
    return {
        "fresh_chat": add_failed(db, user, "email", minutes(10)),
        "old_chat": add_failed(db, user, "sms", days(30)),
        "fresh_alert": add_failed(db, user, "sms", minutes(10), "security", "login_alert"),
        "stale_alert": add_failed(db, user, "sms", hours(3), "security", "login_alert"),
    }


def statuses(db):
    with db.cursor() as cur:
        cur.execute("SELECT id, status FROM deliveries")
        return dict(cur.fetchall())


def enqueued(app):
    from app.queues.enqueue import queue
    return {uuid.UUID(job_id.removeprefix("deliver-")) for job_id in queue("deliveries", app).get_job_ids()}


def audit_rows(db):
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM audit_log WHERE action = 'delivery.retry'")
        return cur.fetchone()[0]


def retry(app, *args, **kwargs):
    return app.test_cli_runner().invoke(args=["deliveries", "retry", *args], **kwargs)


def test_dry_run_prints_what_would_be_sent_and_changes_nothing(app, db, failed):
    before = statuses(db)
    result = retry(app, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines() if "\t" in line}
    assert lines[str(failed["fresh_chat"])][1:] == ["email", "chat/message_received", "10m", "c***@example.com",
                                                     "would send"]
    assert lines[str(failed["old_chat"])][1:] == ["sms", "chat/message_received", "30d", "+44***23", "would send"]
    assert lines[str(failed["fresh_alert"])][-1] == "would send"
    assert lines[str(failed["stale_alert"])][1:] == ["sms", "security/login_alert", "3h", "+44***23",
                                                      "skip: stale urgent alert"]
    assert "3 deliveries would be re-enqueued (dry run: nothing sent or changed)" in result.stdout
    assert EMAIL not in result.output and PHONE not in result.output
    assert statuses(db) == before and enqueued(app) == set() and audit_rows(db) == 0


def test_stale_urgent_alerts_are_skipped_unless_forced(app, db, failed):
    result = retry(app)
    assert result.exit_code == 0, result.output
    assert "3 deliveries re-enqueued" in result.stdout
    assert "1 urgent alerts older than 3600 s skipped (--force sends them)" in result.stderr
    assert enqueued(app) == {failed["fresh_chat"], failed["old_chat"], failed["fresh_alert"]}
    assert statuses(db)[failed["stale_alert"]] == "failed"

    result = retry(app, "--force")
    assert result.exit_code == 0, result.output
    assert "1 deliveries re-enqueued" in result.stdout
    assert failed["stale_alert"] in enqueued(app) and statuses(db)[failed["stale_alert"]] == "pending"


def test_the_stale_age_is_a_setting(make_app, db, failed):
    app = make_app(RETRY_STALE_URGENT_SECONDS=4 * 3600)
    assert retry(app).exit_code == 0
    assert failed["stale_alert"] in enqueued(app)


@pytest.mark.parametrize("since", ["1d", (NOW - datetime.timedelta(days=1)).replace(tzinfo=None).isoformat()])
def test_since_leaves_older_deliveries_alone(app, db, failed, since):
    result = retry(app, "--since", since)
    assert result.exit_code == 0, result.output
    assert enqueued(app) == {failed["fresh_chat"], failed["fresh_alert"]}
    assert statuses(db)[failed["old_chat"]] == "failed"


def test_a_bad_since_is_a_usage_error(app, db, failed):
    result = retry(app, "--since", "last tuesday")
    assert result.exit_code == 2 and "neither an age like 90m" in result.output
    assert enqueued(app) == set()


def test_more_than_the_threshold_without_a_terminal_needs_yes(make_app, db, failed):
    app = make_app(RETRY_CONFIRM_ABOVE=2)
    before = statuses(db)
    result = retry(app, input="y\n")            # typed input is no answer without a terminal
    assert result.exit_code == 1
    assert "refusing to re-enqueue 3 deliveries (more than RETRY_CONFIRM_ABOVE=2)" in result.stderr
    assert statuses(db) == before and enqueued(app) == set() and audit_rows(db) == 0
    result = retry(app, "--yes")
    assert result.exit_code == 0, result.output
    assert len(enqueued(app)) == 3 and audit_rows(db) == 1


def run_at_a_terminal(env, answer, timeout=60):
    """`flask deliveries retry` in a real process whose stdin is a terminal; types `answer` at the prompt."""
    primary, secondary = pty.openpty()
    root = REPO_ROOT
    proc = subprocess.Popen([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "deliveries", "retry"],
                            cwd=root, env=env, stdin=secondary, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen, deadline = b"", time.monotonic() + timeout
    while b"[y/N]" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, f"no prompt; the terminal showed {seen!r}"
        if select.select([primary], [], [], 0.5)[0]:
            seen += os.read(primary, 1024)
    os.write(primary, answer.encode() + b"\n")
    out, _ = proc.communicate(timeout=timeout)
    os.close(primary)
    return proc.returncode, seen.decode(), out.decode()


@pytest.mark.slow
def test_at_a_terminal_it_asks_and_a_no_changes_nothing(app, clean, db, failed):
    env = dict(os.environ, **clean, RETRY_CONFIRM_ABOVE="2")
    before = statuses(db)
    code, prompt, _ = run_at_a_terminal(env, "n")
    assert "Re-enqueue 3 deliveries? [y/N]" in prompt and code == 1
    assert statuses(db) == before and enqueued(app) == set()
    code, _, out = run_at_a_terminal(env, "y")
    assert code == 0 and "3 deliveries re-enqueued" in out
    assert enqueued(app) == {failed["fresh_chat"], failed["old_chat"], failed["fresh_alert"]}
