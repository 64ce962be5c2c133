"""Roles the service cannot escape (issue 20, point 1): web and worker connect as an application
role that may read and append the audit but never update, delete, truncate, alter it or disable
its triggers; the release (as the owner) creates and grants that role."""
import uuid

import psycopg2
import pytest
from psycopg2 import errors

from app.migrate import RoleError, release
from testkit.database import APP_ROLE, with_dbname
from testkit.identity import make_token
from testkit.rows import insert_notification

FORBIDDEN = [
    "UPDATE audit_log SET actor_id = 'mallory'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "ALTER TABLE audit_log ADD COLUMN note text",
    "DROP TABLE audit_log",
    "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN RETURN NEW; END; $$",
    "SET session_replication_role = replica",
    "ALTER TABLE notifications DISABLE TRIGGER ALL",
]


def history(client, db):
    """One audited change: a user reads a notification."""
    user_id = uuid.uuid4()
    headers = {"Authorization": f"Bearer {make_token(user_id)}"}
    notification = insert_notification(db, user_id)
    assert client.patch(f"/v1/notifications/{notification['id']}/read", headers=headers).status_code == 200
    return user_id


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_application_role_cannot_rewrite_the_audit(app, client, db, statement):
    history(client, db)
    with db.cursor() as cur:
        cur.execute("SELECT current_user, (SELECT count(*) FROM audit_log)")
        assert cur.fetchone() == (APP_ROLE, 1)
        with pytest.raises((errors.InsufficientPrivilege, errors.RaiseException)):
            cur.execute(statement)
        cur.execute("SELECT count(*), count(*) FILTER (WHERE actor_id = 'mallory') FROM audit_log")
        assert cur.fetchone() == (1, 0)


def test_the_application_role_can_append_and_seal_but_not_reseal(app, client, db):
    from workers.relay import seal_audit
    history(client, db)
    assert seal_audit(app) == 1
    with db.cursor() as cur:
        cur.execute("SELECT id FROM audit_log")
        (row_id,) = cur.fetchone()
        cur.execute("SELECT audit_seal(%s, %s, %s, %s, %s)",      # the definer function seals unsealed
                    ([row_id], [1], ["0" * 64], ["f" * 64], ["k"]))  # rows only
        assert cur.fetchone() == (0,)
        cur.execute("SELECT hash <> repeat('f', 64) FROM audit_log")
        assert cur.fetchone() == (True,)


def test_truncate_is_refused_to_the_owner_too(app, client, db, owner_db):
    history(client, db)
    with owner_db.cursor() as cur:
        with pytest.raises(errors.RaiseException, match="TRUNCATE is refused"):
            cur.execute("TRUNCATE audit_log")
        cur.execute("SELECT count(*) FROM audit_log")
        assert cur.fetchone() == (1,)


def _drop_role(server_url, role):
    admin = psycopg2.connect(with_dbname(server_url, "postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP ROLE IF EXISTS "{role}"')
    admin.close()


def test_the_release_creates_and_grants_the_application_role(empty_database, pg_server):
    """A fresh database and a role that does not exist yet: the release creates it, grants it the
    service's rights (it can serve), and running the release again changes nothing."""
    role = f"notif_app_{uuid.uuid4().hex[:8]}"
    from psycopg2.extensions import make_dsn, parse_dsn
    params = parse_dsn(empty_database)
    params.pop("password", None)
    params["user"] = role
    app_url = make_dsn(**params)
    try:
        lines = []
        release(empty_database, app_url, echo=lines.append)
        assert f"created the application role {role}" in lines and f"granted the application role {role}" in lines
        release(empty_database, app_url, echo=lines.append)
        conn = psycopg2.connect(app_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False)
            cur.execute("SELECT has_table_privilege('audit_log', 'INSERT'), has_table_privilege('audit_log', 'UPDATE'),"
                        " has_table_privilege('audit_log', 'DELETE'), has_table_privilege('audit_log', 'TRUNCATE'),"
                        " has_table_privilege('notifications', 'UPDATE'), has_table_privilege('schema_migrations', 'INSERT')")
            assert cur.fetchone() == (True, False, False, False, True, False)
        conn.close()
    finally:
        admin = psycopg2.connect(empty_database)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP OWNED BY "{role}"')
        admin.close()
        _drop_role(pg_server, role)


def test_the_release_refuses_a_superuser_as_the_application_role(empty_database):
    """DATABASE_URL naming a superuser (the default `postgres`) while MIGRATION_DATABASE_URL names
    another owner: the service could rewrite its audit, so the release stops and says why."""
    from psycopg2.extensions import make_dsn, parse_dsn
    owner = f"notif_owner_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(empty_database)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{owner}" LOGIN')
        cur.execute("SELECT current_database()")
        cur.execute(f'ALTER DATABASE "{cur.fetchone()[0]}" OWNER TO "{owner}"')
        cur.execute(f'ALTER SCHEMA public OWNER TO "{owner}"')
    params = parse_dsn(empty_database)
    params.pop("password", None)
    owner_url = make_dsn(**dict(params, user=owner))
    try:
        with pytest.raises(RoleError, match="is a superuser"):
            release(owner_url, empty_database, echo=lambda *_: None)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT current_database()")
            database = cur.fetchone()[0]
            cur.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
            cur.execute("ALTER SCHEMA public OWNER TO pg_database_owner")
            cur.execute(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER')
            cur.execute(f'DROP OWNED BY "{owner}"')
            cur.execute(f'DROP ROLE "{owner}"')
        admin.close()
