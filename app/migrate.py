"""Apply `migrations_sql/NNNN_name.sql` in order, once each.

Each file runs in its own transaction together with its row in
`schema_migrations`; a session-level advisory lock makes concurrent releases
wait for each other instead of racing, so re-running applies nothing. A
migration may rewrite a large table and a release may wait for another's lock:
the runner opts out of the statement and idle-in-transaction timeouts that
every pooled connection has (app/db.py), explicitly, in case the role or the
DATABASE_URL sets them.

The release runs as the owner of the schema (`MIGRATION_DATABASE_URL`); web
and worker connect as an application role (`DATABASE_URL`) that owns nothing,
so it cannot alter a table or disable a trigger, and holds only SELECT and
INSERT on the audit (docs/audit.md). After migrating, the release creates that
role when it is missing and grants it what the service needs, every time, so a
table a migration adds is granted at once. With one URL for both (development),
there is no second role and nothing to grant.
"""
import os
import re
import time

import click
import psycopg2
from psycopg2 import errors, sql
from psycopg2.extensions import parse_dsn

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


# What the application role may do: everything its code does, and on the audit only read and append.
# Sealing and pseudonymising run through the owner's functions (migrations_sql/0013).
_GRANTS = (
    "GRANT CONNECT ON DATABASE {database} TO {role}",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON audit_log FROM {role}",
    "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    "GRANT EXECUTE ON FUNCTION audit_horizon(), audit_seal(bigint[], bigint[], text[], text[], text[]),"
    " audit_pseudonymise(bigint[], text[], text[]) TO {role}",
)


class RoleError(Exception):
    """The application role cannot be made safe: the release stops and says what a DBA must do."""


def application_role(owner_dsn, app_dsn):
    """The role web and worker connect as, or None when it is the owner's (one URL, development)."""
    owner, app = parse_dsn(owner_dsn).get("user"), parse_dsn(app_dsn).get("user")
    return None if app is None or app == owner else app


def grant_application_role(owner_dsn, app_dsn, echo=print):
    """Create the application role when missing and grant it the service's rights; returns its name."""
    role = application_role(owner_dsn, app_dsn)
    if role is None:
        return None
    password = parse_dsn(app_dsn).get("password")
    conn = psycopg2.connect(owner_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (role,))
            found = cur.fetchone()
            if found is None:
                _create_role(cur, role, password, echo)
            elif found[0]:
                raise RoleError(f"DATABASE_URL's role {role!r} is a superuser (or bypasses row security): the"
                                " service could rewrite its own audit; use a plain role (docs/audit.md)")
            cur.execute("SELECT current_database()")
            names = {"database": sql.Identifier(cur.fetchone()[0]), "role": sql.Identifier(role)}
            _grant(cur, names)
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = %s", (role,))
            if cur.fetchone()[0]:
                raise RoleError(f"DATABASE_URL's role {role!r} owns tables of this database: it could alter the"
                                " audit; make MIGRATION_DATABASE_URL's role their owner (docs/audit.md)")
    except errors.InsufficientPrivilege as exc:
        raise RoleError(f"the migration role may not create or grant {role!r} ({exc.pgerror.strip()}); a DBA"
                        " creates it as docs/audit.md shows") from None
    finally:
        conn.close()
    echo(f"granted the application role {role}")
    return role


def _grant(cur, names, attempts=5):
    """The grants, in one transaction; again when a concurrent release updated the same catalog row
    ("tuple concurrently updated")."""
    for attempt in range(attempts):
        try:
            cur.execute("BEGIN")
            for statement in _GRANTS:
                cur.execute(sql.SQL(statement).format(**names))
            cur.execute("COMMIT")
            return
        except psycopg2.errors.InternalError_ as exc:
            cur.execute("ROLLBACK")
            if "concurrently" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _create_role(cur, role, password, echo):
    """CREATE ROLE, tolerating a concurrent release (or test run) creating it first."""
    statement = sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS").format(
        sql.Identifier(role))
    if password:
        statement = sql.SQL("{} PASSWORD {}").format(statement, sql.Literal(password))
    try:
        cur.execute(statement)
        echo(f"created the application role {role}")
    except (errors.DuplicateObject, errors.UniqueViolation):
        pass


def release(owner_dsn, app_dsn, echo=print, partition_rows=None):
    """The release step: migrate as the owner, make the history's partitions ahead of the sequence
    with this deploy's `HISTORY_PARTITION_ROWS` (app/history/partitions.py; the workers keep them
    so), then grant the application role."""
    applied = migrate(owner_dsn, echo=echo)
    if partition_rows:
        from .history import partitions
        conn = psycopg2.connect(owner_dsn)
        try:
            partitions.ensure(conn, partition_rows)
        finally:
            conn.close()
    grant_application_role(owner_dsn, app_dsn, echo=echo)
    return applied


def init_app(app):
    @app.cli.command("migrate")
    def migrate_command():
        """Apply pending SQL migrations as MIGRATION_DATABASE_URL and grant DATABASE_URL's role (the
        Procfile's release step)."""
        try:
            applied = release(app.config["MIGRATION_DATABASE_URL"], app.config["DATABASE_URL"], echo=click.echo,
                              partition_rows=app.config["HISTORY_PARTITION_ROWS"])
        except RoleError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"{len(applied)} migration(s) applied" if applied else "database is up to date")
