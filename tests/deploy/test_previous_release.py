"""The previous release's code keeps working on this release's schema (issue 19, point 4).

`release` (the Procfile) migrates while the previous release still serves, so every schema a
release ships must serve the previous release's code (docs/releases.md). This test does a deploy
the way production does: the previous release's tree (the last tag, or else the commit before
the one that added the newest file in migrations_sql/) is exported with `git archive`; a fresh
database gets THAT release's migrations; its own gunicorn and RQ worker start from its tree (on
the current virtualenv); a user goes through the whole path; then THIS release's runner applies
this release's migrations while those processes serve, and the path runs again on the new
schema: trigger -> stored -> listed in the inbox -> live on a stream -> marked read -> email
received by a real SMTP server (aiosmtpd); and this release's code reads back what the old one
wrote (deliveries, stats).

The rolling-deploy test mixes the two releases' processes (old web + new worker, and the
reverse), so jobs and stream messages cross releases through Redis.

The last tests guard the rule for new migration files: a contract-style statement (a drop,
a rename, a type change, a new NOT NULL...) needs a `-- contract: after <release>` line naming
the release from which on no code reads what it removes, and that release must be the previous
release or older.
"""
import datetime
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from app.migrate import MIGRATIONS_DIR, migrate, migration_files
from testkit.identity import make_token, SERVICE
from testkit.processes import ProcessGroup, RQWorker, ServiceProcess, wait_until, WebServer
from testkit.providers import FakeSMTP
from devtools.services import spawn

pytestmark = pytest.mark.timeout(180)

# ------------------------------------------------------------------------------- the previous release


def git(*args):
    return subprocess.run(["git", "-C", str(Path(MIGRATIONS_DIR).parent), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def history_or_skip():
    """The tests need the repository's history (CI clones main with all of it)."""
    try:
        shallow = git("rev-parse", "--is-shallow-repository")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}): the previous release cannot be found")
    if shallow == "true":
        pytest.skip("shallow clone: the previous release is not in it (clone with full history, "
                    "e.g. actions/checkout's fetch-depth: 0)")


def previous_release():
    """(revision, why): the newest tag below HEAD, else the parent of the commit that added the
    newest migration file (HEAD itself when that file is not committed yet)."""
    head = git("rev-parse", "HEAD")
    for tag in git("tag", "--merged", "HEAD", "--sort=-creatordate").splitlines():
        if git("rev-parse", f"{tag}^{{commit}}") != head:
            return tag, f"the last tag, {tag}"
    newest = os.path.basename(migration_files()[-1][1])
    added = git("log", "--diff-filter=A", "--format=%H", "--", f"migrations_sql/{newest}").splitlines()
    if not added:
        return "HEAD", f"HEAD ({newest} is not committed yet)"
    return f"{added[-1]}^", f"{added[-1][:10]}^, the commit before {newest} was added"


def export(revision, directory):
    """The tree of `revision`, as `git archive` gives it (no checkout, the repository is untouched)."""
    archive = subprocess.run(["git", "-C", str(Path(MIGRATIONS_DIR).parent), "archive", "--format=tar",
                              revision], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return Path(directory)


@dataclass
class Release:
    path: Path       # its tree, exported
    revision: str
    why: str         # how it was chosen


@pytest.fixture(scope="module")
def old_release():
    history_or_skip()
    revision, why = previous_release()
    directory = tempfile.mkdtemp(prefix="previous-release-")
    try:
        yield Release(export(revision, directory), git("rev-parse", f"{revision}^{{commit}}"), why)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ------------------------------------------------------------------------------- its processes


class _FromTree(ServiceProcess):
    """Spawned in the previous release's tree, so `gunicorn.conf.py`, `wsgi:app`, `-m workers`,
    notifications.yaml and queue.yaml are that release's."""

    tree = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = spawn(self.args, env=self.env, cwd=self.tree, stdin=subprocess.DEVNULL,
                              stdout=log, stderr=subprocess.STDOUT)
        return self


class OldWeb(WebServer, _FromTree):
    pass


class OldWorker(RQWorker, _FromTree):
    pass


def old_environment(tree, env):
    """The run's services, the previous release's code: its tree first on the path and its own
    config files; bytecode written, so the test can see which tree was imported."""
    env = ProcessGroup.environment(env)
    for name in ("NOTIFICATIONS_CONFIG", "QUEUE_CONFIG", "PYTHONDONTWRITEBYTECODE", "PYTHONHOME"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(tree)
    return env


def start_old(tree, cls, env, log_dir, **options):
    process = cls(old_environment(tree, env), log_dir, **options)
    process.tree = str(tree)
    return process.start()


def imported_from(tree, package):
    """True once a process imported `package` from the previous release's tree (nothing else does)."""
    return any((tree / package / "__pycache__").glob("__init__.*.pyc"))


# ------------------------------------------------------------------------------- the smoke path


def bearer(user_id):
    return {"Authorization": f"Bearer {make_token(user_id)}"}


def stored(database_url, user_id):
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, title FROM notifications WHERE user_id = %s ORDER BY seq", (str(user_id),))
            return cur.fetchall()
    finally:
        conn.close()


def applied_versions(database_url):
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            return [version for (version,) in cur.fetchall()]
    finally:
        conn.close()


def smoke(web, smtp, database_url, title):
    """One user's whole path through the running processes; returns (user id, notification id)."""
    user_id, address = uuid.uuid4(), f"release-{uuid.uuid4().hex[:8]}@example.org"
    headers = bearer(user_id)
    response = requests.put(f"{web.url}/v1/notifications/users/{user_id}/contact", headers=SERVICE,
                            json={"email": address}, timeout=10)
    assert response.status_code == 200, response.text

    stream = web.stream(headers=headers)
    try:
        assert stream.ok, (stream.status_code, stream.response.text)
        stream.wait_named("unread", 1, timeout=15)      # subscribed: the replay is over

        body = {"type": "chat", "event": "message_received", "title": title, "content": "from the old code",
                "user_ids": [str(user_id)]}
        response = web.post("/v1/notifications/trigger", headers=SERVICE, json=body)
        assert response.status_code == 202, response.text

        rows = wait_until(lambda: stored(database_url, user_id), 20, message=f"{title!r} stored")
        assert [title for _, title in rows] == [title]
        nid = rows[0][0]

        inbox = web.get("/v1/notifications", headers=headers)
        assert inbox.status_code == 200, inbox.text
        assert [(item["id"], item["title"], item["read"]) for item in inbox.json()["items"]] == [(nid, title, False)]

        (live,) = stream.wait_events(1, timeout=15)
        assert (live.json()["id"], live.json()["title"]) == (nid, title)

        marked = requests.patch(f"{web.url}/v1/notifications/{nid}/read", headers=headers, timeout=10)
        assert marked.status_code == 200, marked.text
        assert marked.json()["read"] is True
        (read_event,) = stream.wait_named("read", 1, timeout=15)
        assert read_event.json()["ids"] == [nid]
        unread = web.get("/v1/notifications", headers=headers, params={"status": "unread"})
        assert unread.status_code == 200 and unread.json()["items"] == [], unread.text
    finally:
        stream.close()

    mail = wait_until(lambda: [m for m in smtp.messages if address in m["rcpt_tos"]], 30,
                      message=f"the email of {title!r}")
    assert len(mail) == 1 and mail[0]["message"]["Subject"] == title
    return user_id, nid


def assert_read_by_this_release(env, since, notifications, context):
    """This release's API over the rows the previous release wrote: each notification delivered once
    in-app and once by email, in its deliveries and in the stats."""
    from app import create_app
    app = create_app(dict(env))
    try:
        client = app.test_client()
        for user_id, nid in notifications.items():
            response = client.get(f"/v1/notifications/{nid}/deliveries", headers=bearer(user_id))
            assert response.status_code == 200, response.get_json()
            assert sorted((d["channel"], d["status"]) for d in response.get_json()["items"]) == \
                [("email", "sent"), ("system", "sent")], f"{context}: {response.get_json()}"
        until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
        window = {"from": since.isoformat().replace("+00:00", "Z"), "to": until.isoformat().replace("+00:00", "Z")}
        response = client.get("/v1/notifications/stats", headers=SERVICE, query_string=window)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert body["created"] == len(notifications)
        sent = {channel: counts["sent"] for channel, counts in body["deliveries"].items() if counts["sent"]}
        assert sent == {"email": len(notifications), "system": len(notifications)}, f"{context}: {body}"
    finally:
        app.extensions["db_pool"].close()


@pytest.mark.slow
def test_previous_release_serves_on_this_schema(old_release, empty_database, clean, tmp_path):
    old_tree = old_release.path
    env = dict(clean, DATABASE_URL=empty_database, MAIL_SERVER="127.0.0.1", MAIL_TIMEOUT="5",
               MAIL_DEFAULT_SENDER="notify@bank.example")
    migrate(empty_database, directory=str(old_tree / "migrations_sql"), echo=lambda *_: None)
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    smtp = FakeSMTP().start()
    env["MAIL_PORT"] = str(smtp.port)
    started = []
    try:
        started.append(start_old(old_tree, OldWorker, env, str(tmp_path)))
        started.append(start_old(old_tree, OldWeb, env, str(tmp_path), workers=1, keepalive=1))
        web = started[-1]
        assert imported_from(old_tree, "app") and imported_from(old_tree, "workers"), \
            f"the processes did not run the tree of {old_release.why}"

        before, before_id = smoke(web, smtp, empty_database, "Before the release")

        applied = migrate(empty_database, echo=lambda *_: None)      # the release phase, old code serving
        assert applied_versions(empty_database) == [v for v, _ in migration_files()]

        context = f"previous release: {old_release.why}; migrations applied under it: {applied or 'none'}"
        try:
            after, after_id = smoke(web, smtp, empty_database, "After the release")
            inbox = web.get("/v1/notifications", headers=bearer(before))
            assert inbox.status_code == 200, inbox.text
            assert [(i["id"], i["read"]) for i in inbox.json()["items"]] == [(before_id, True)]
        except AssertionError as exc:
            logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in started)
            raise AssertionError(f"{context}\n{exc}\n{logs}") from exc
        for process in started:
            assert process.alive, f"{context}\n{process.name} died:\n{process.output()[-3000:]}"
        # The release's own code then takes over and reads what the previous one wrote on both schemas.
        assert_read_by_this_release(env, since, {before: before_id, after: after_id}, context)
    finally:
        for process in reversed(started):
            process.stop()
        smtp.stop()


MIXED_BREAK = ("3c6d551^ -> main changed both Redis formats in one release: RQ jobs are JSON instead of pickle "
               "(app/queues/enqueue.py) and stream messages carry a MAC (app/bus/codec.py). Measured: a trigger "
               "accepted by one release's web waits for the other's relay (30 s) and no live event crosses "
               "releases (the old hub frames `event: n`, the new hub drops the old format). docs/releases.md")


@pytest.fixture
def mixed_break(request, old_release):
    """MIXED_BREAK, expected (strict) only while the previous release predates it: a previous release
    whose stream codec is this one's (the same `CHANNEL_KIND`; RQ's JSON came with it) must mix."""
    from app.bus.codec import CHANNEL_KIND
    codec = old_release.path / "app" / "bus" / "codec.py"
    if not (codec.exists() and f'CHANNEL_KIND = "{CHANNEL_KIND}"' in codec.read_text()):
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=MIXED_BREAK))


@pytest.mark.slow
@pytest.mark.usefixtures("mixed_break")
@pytest.mark.parametrize("old_side", ["web", "worker"])
def test_a_rolling_deploy_mixes_both_releases(old_release, empty_database, clean, tmp_path, old_side):
    """During a rolling restart one node's web may be the previous release while a worker is this
    one (or the reverse): jobs and stream messages then cross releases through Redis."""
    env = dict(clean, DATABASE_URL=empty_database, MAIL_SERVER="127.0.0.1", MAIL_TIMEOUT="5",
               MAIL_DEFAULT_SENDER="notify@bank.example")
    migrate(empty_database, echo=lambda *_: None)
    smtp = FakeSMTP().start()
    env["MAIL_PORT"] = str(smtp.port)
    with ProcessGroup(str(tmp_path)) as group:
        try:
            if old_side == "web":
                group.started.append(start_old(old_release.path, OldWeb, env, str(tmp_path), workers=1, keepalive=1))
                group.start_worker(env)
                web = group.started[0]
            else:
                group.started.append(start_old(old_release.path, OldWorker, env, str(tmp_path)))
                web = group.start_web(env, workers=1, keepalive=1)
            smoke(web, smtp, empty_database, f"Old {old_side}, new {'worker' if old_side == 'web' else 'web'}")
        finally:
            smtp.stop()


# ------------------------------------------------------------------------------- the authors' rule

# Files shipped before the rule existed (docs/releases.md tells which of them were contract steps).
GRANDFATHERED = {
    "0001_notifications", "0002_dispatch", "0003_contacts", "0004_preferences", "0005_quiet_hours",
    "0006_stats_indexes", "0007_audit", "0008_unread_counts_index", "0009_inbox_covering_index",
    "0010_write_path_batching", "0011_unread_counters", "0012_in_app_deliveries_from_notifications",
}

CONTRACT_MARKER = re.compile(r"^--\s*contract:\s*after\s+(\S+)", re.IGNORECASE | re.MULTILINE)
_CONTRACT_PATTERNS = [
    (r"\bDROP\s+(COLUMN|TABLE|VIEW|FUNCTION|TYPE|SEQUENCE|TRIGGER)\b", "drops what the previous release may use"),
    (r"\bDROP\s+CONSTRAINT\b", "drops a constraint the previous release may rely on"),
    (r"\bRENAME\b", "renames what the previous release uses by its old name"),
    (r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", "changes a column's type"),
    (r"\bSET\s+NOT\s+NULL\b", "makes a column required that the previous release may leave empty"),
    (r"\bDELETE\s+FROM\b|\bTRUNCATE\b", "removes rows the previous release wrote and may read"),
]


def _statements(sql):
    """The file's statements, upper-case on one line each, without comments."""
    sql = re.sub(r"--[^\n]*", "", sql)
    return [" ".join(s.split()).upper() for s in sql.split(";") if s.strip()]


def contract_statements(sql):
    """(statement, why) for each statement the previous release's code may not survive."""
    found = []
    for statement in _statements(sql):
        for pattern, why in _CONTRACT_PATTERNS:
            if re.search(pattern, statement):
                found.append((statement, why))
        if statement.startswith("ALTER TABLE"):
            for clause in re.split(r",\s*(?=ADD\b|ALTER\b|DROP\b)", statement):
                if re.search(r"\bADD\s+COLUMN\b.*\bNOT\s+NULL\b", clause) and "DEFAULT" not in clause:
                    found.append((statement, "adds a required column the previous release does not fill"))
                if re.search(r"\bADD\b.*\b(CHECK|FOREIGN\s+KEY|REFERENCES)\b", clause) and "NOT VALID" not in clause:
                    found.append((statement, "adds a constraint checked at once (ADD ... NOT VALID, then VALIDATE)"))
    return found


def release_problems(name, sql, previous=None, is_ancestor=None):
    """Why this migration file breaks the rule (empty: it keeps it)."""
    if name in GRANDFATHERED:
        return []
    contract = contract_statements(sql)
    if not contract:
        return []
    marker = CONTRACT_MARKER.search(sql)
    if marker is None:
        return [f"{name}: {why}: {statement[:120]} (a contract step needs `-- contract: after <release>`, "
                "docs/releases.md)" for statement, why in contract]
    if previous is not None and not is_ancestor(marker.group(1), previous):
        return [f"{name}: contract after {marker.group(1)}, but the previous release ({previous}) is older: "
                "it may still read what this file removes; ship it a release later"]
    return []


def _is_ancestor(release, previous):
    try:
        git("merge-base", "--is-ancestor", f"{release}^{{commit}}", previous)
    except subprocess.CalledProcessError:
        return False
    return True


def test_the_guard_flags_contract_steps_without_a_marker():
    assert release_problems("0013_x", "ALTER TABLE contacts ADD COLUMN locale2 text;") == []
    assert release_problems("0013_x", "ALTER TABLE triggers ADD COLUMN n integer NOT NULL DEFAULT 0;") == []
    assert release_problems("0013_x", "ALTER TABLE t ADD CONSTRAINT c CHECK (n > 0) NOT VALID;") == []
    assert release_problems("0013_x", "-- DROP COLUMN in a comment only\nSELECT 1;") == []
    for sql in ("ALTER TABLE contacts DROP COLUMN locale;", "ALTER TABLE contacts RENAME COLUMN phone TO mobile;",
                "ALTER TABLE contacts ALTER COLUMN locale TYPE varchar(10);",
                "ALTER TABLE contacts ALTER COLUMN email SET NOT NULL;",
                "ALTER TABLE contacts ADD COLUMN region text NOT NULL;",
                "ALTER TABLE t ADD CONSTRAINT c CHECK (n > 0);", "DELETE FROM deliveries WHERE channel = 'x';"):
        assert release_problems("0013_x", sql), sql
        assert release_problems("0012_in_app_deliveries_from_notifications", sql) == []   # grandfathered
        assert release_problems("0013_x", "-- contract: after v1.4\n" + sql) == []
        assert release_problems("0013_x", "-- contract: after v1.4\n" + sql, "v1.3",
                                lambda release, previous: False)


@pytest.mark.slow
def test_new_migrations_mark_their_contract_steps():
    previous = None
    try:
        history_or_skip()
        previous = git("rev-parse", f"{previous_release()[0]}^{{commit}}")
    except pytest.skip.Exception:
        pass     # without history the marker is still required; only its release cannot be checked
    problems = []
    for version, path in migration_files():
        with open(path) as handle:
            problems += release_problems(version, handle.read(), previous, _is_ancestor)
    assert problems == []
