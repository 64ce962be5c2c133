"""Apply `migrations_sql/NNNN_name.sql` in order, once each.

Each file runs in its own transaction together with its row in
`schema_migrations`; a session-level advisory lock makes concurrent releases
wait for each other instead of racing, so re-running applies nothing. A
migration may rewrite a large table and a release may wait for another's lock:
the runner opts out of the statement and idle-in-transaction timeouts that
every pooled connection has (app/db.py), explicitly, in case the role or the
DATABASE_URL sets them.
"""
import os
import re

import click
import psycopg2

from .db import Locks

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations_sql")
FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files(directory=MIGRATIONS_DIR):
    """(version, path) for every migration file, in order."""
    found = []
    for name in sorted(os.listdir(directory)):
        match = FILE_RE.match(name)
        if match:
            found.append((name[:-4], os.path.join(directory, name)))
    return found


def migrate(dsn, directory=MIGRATIONS_DIR, echo=print):
    """Apply what is missing; return the versions applied by this call."""
    conn = psycopg2.connect(dsn)
    applied_now = []
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
            cur.execute("SELECT pg_advisory_lock(%s)", (Locks.MIGRATIONS,))
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        conn.commit()
        for version, path in migration_files(directory):
            if version in done:
                continue
            with open(path) as handle:
                sql = handle.read()
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            conn.commit()
            applied_now.append(version)
            echo(f"applied {version}")
    finally:
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (Locks.MIGRATIONS,))
        conn.close()
    return applied_now


def init_app(app):
    @app.cli.command("migrate")
    def migrate_command():
        """Apply pending SQL migrations (the Procfile's release step)."""
        applied = migrate(app.config["DATABASE_URL"], echo=click.echo)
        click.echo(f"{len(applied)} migration(s) applied" if applied else "database is up to date")
