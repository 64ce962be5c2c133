"""Plain-SQL migrations: from zero, idempotent, safe when two releases race."""
import os
import re
import subprocess
import sys

import psycopg2
import pytest

from app.migrate import MIGRATIONS_DIR, migrate, migration_files
from testkit.concurrency import run_together
from testkit.identity import API_KEY, JWT_SECRET
from devtools.services import REPO_ROOT

REPO = str(REPO_ROOT)
CREATE_TABLE = re.compile(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?\"?(\w+)\"?", re.IGNORECASE)


def query(url, sql, params=None):
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def tables(url):
    return {row[0] for row in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def recorded(url):
    return query(url, "SELECT version, applied_at FROM schema_migrations ORDER BY version")


def expected_tables():
    """Every table some migration file creates (not one a function of it creates when called, as
    0026's conversion does with `notifications_partitioned`, renamed `notifications`)."""
    names = set()
    for _, path in migration_files():
        with open(path) as handle:
            sql = re.sub(r"\$\$.*?\$\$", "$$ $$", handle.read(), flags=re.S)
            names.update(name.lower() for name in CREATE_TABLE.findall(sql))
    return names


def test_migration_files_are_found_in_order():
    files = migration_files()
    versions = [version for version, _ in files]
    assert versions and versions == sorted(versions)
    assert versions[0].startswith("0001_")
    # every .sql file in the directory follows the naming rule, so none is silently skipped
    sql_files = sorted(name[:-4] for name in os.listdir(MIGRATIONS_DIR) if name.endswith(".sql"))
    assert sql_files == versions


def test_from_zero_creates_every_table(empty_database):
    assert tables(empty_database) == set()
    applied = migrate(empty_database, echo=lambda *_: None)
    versions = [version for version, _ in migration_files()]
    assert applied == versions
    assert [row[0] for row in recorded(empty_database)] == versions
    present = tables(empty_database)
    assert {"notifications", "schema_migrations"} <= present
    assert expected_tables() <= present
    columns = {row[0] for row in query(empty_database, "SELECT column_name FROM information_schema.columns"
                                                 " WHERE table_name = 'notifications'")}
    assert {"id", "seq", "user_id", "customer_id", "type", "event", "title", "content", "link_url",
            "link_text", "rec_type", "rec_id", "read_at", "created_at", "deleted_at"} <= columns


def test_second_run_applies_nothing(empty_database):
    messages = []
    assert migrate(empty_database, echo=messages.append)
    assert messages == [f"applied {version}" for version, _ in migration_files()]
    before = recorded(empty_database)
    again = []
    assert migrate(empty_database, echo=again.append) == []
    assert again == []
    assert recorded(empty_database) == before


def test_concurrent_runs_apply_each_file_once(empty_database):
    results = run_together(lambda _: migrate(empty_database, echo=lambda *_: None), 2)
    versions = [version for version, _ in migration_files()]
    # between them they applied every file exactly once
    assert sorted(results[0] + results[1]) == versions
    assert [row[0] for row in recorded(empty_database)] == versions
    assert expected_tables() <= tables(empty_database)


def test_failing_migration_is_rolled_back_and_releases_the_lock(empty_database, tmp_path):
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();")
    with pytest.raises(psycopg2.Error):
        migrate(empty_database, directory=str(tmp_path), echo=lambda *_: None)
    assert [row[0] for row in recorded(empty_database)] == ["0001_good"]
    assert tables(empty_database) == {"good", "schema_migrations"}
    # fixed file: the next release applies just it (and does not wait on a leftover lock)
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half_done (id int);")
    assert migrate(empty_database, directory=str(tmp_path), echo=lambda *_: None) == ["0002_bad"]
    assert "half_done" in tables(empty_database)


@pytest.mark.slow
def test_release_command(empty_database, redis_proc):
    """The Procfile's `release: flask --app wsgi migrate`, twice."""
    env = dict(os.environ, DATABASE_URL=empty_database, REDIS_URL=redis_proc.url, JWT_SECRET=JWT_SECRET,
               API_KEYS=API_KEY, DEVELOPMENT="true")   # the test's secrets are development values
    env.pop("NOTIFICATIONS_CONFIG", None)
    env.pop("QUEUE_CONFIG", None)
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "migrate"]
    first = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    count = len(migration_files())
    assert f"{count} migration(s) applied" in first.stdout
    assert expected_tables() <= tables(empty_database)
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert "database is up to date" in second.stdout
    assert len(recorded(empty_database)) == count


def test_covering_index_migration_replaces_an_invalid_leftover(empty_database, tmp_path):
    """0009's index may be built by hand with CREATE INDEX CONCURRENTLY before the release; a build
    that failed leaves an INVALID index of that name, which the migration must rebuild, not keep."""
    files = migration_files()
    index = [v for v, _ in files].index("0009_inbox_covering_index")
    for version, path in files[:index]:
        (tmp_path / f"{version}.sql").write_text(open(path).read())
    migrate(empty_database, directory=str(tmp_path), echo=lambda *_: None)
    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    with conn.cursor() as cur:
        user = "123e4567-e89b-12d3-a456-426614174000"
        cur.execute("INSERT INTO notifications (id, user_id, type, event, title) VALUES"
                    " (gen_random_uuid(), %s, 'chat', 'e', 't'), (gen_random_uuid(), %s, 'chat', 'e', 't')",
                    (user, user))
        with pytest.raises(psycopg2.errors.UniqueViolation):   # an interrupted manual build, as it leaves it
            cur.execute("CREATE UNIQUE INDEX CONCURRENTLY notifications_inbox_covering ON notifications (user_id)")
    conn.close()
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('notifications_inbox_covering')"
    assert query(empty_database, valid) == [(False,)]

    assert migrate(empty_database, echo=lambda *_: None)[0] == "0009_inbox_covering_index"
    assert query(empty_database, valid) == [(True,)]
    definition = query(empty_database, "SELECT indexdef FROM pg_indexes WHERE indexname = 'notifications_inbox_covering'")
    assert definition[0][0].endswith("(user_id, seq DESC) INCLUDE (customer_id, read_at, deleted_at, in_app)")
    assert query(empty_database, "SELECT to_regclass('notifications_inbox')") == [(None,)]
