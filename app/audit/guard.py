"""Web and worker refuse to start, outside development, as a role that could rewrite the audit.

Why at start-up: a deploy that forgot MIGRATION_DATABASE_URL runs the service as
the schema's owner (often a superuser), and nothing would look wrong until an
auditor asked. The check is one query: is the role a superuser, a member of
the audit table's owner, or granted UPDATE, DELETE or TRUNCATE on it? The
release itself runs as the owner by design and is not checked. A database that
cannot be reached yet is not refused (it may come up after this process;
/readyz reports it); a schema not migrated yet neither.
"""
import psycopg2

from ..errors import ConfigError

_QUERY = ("SELECT current_user, r.rolsuper, pg_has_role(current_user, t.tableowner, 'MEMBER'),"
          " has_table_privilege('public.audit_log', 'UPDATE') OR has_table_privilege('public.audit_log', 'DELETE')"
          " OR has_table_privilege('public.audit_log', 'TRUNCATE')"
          " FROM pg_roles r, pg_tables t WHERE r.rolname = current_user"
          " AND t.schemaname = 'public' AND t.tablename = 'audit_log'")


def refuse_audit_rewriters(settings):
    """Raise ConfigError when DATABASE_URL's role could change the audit (outside development)."""
    if settings["DEVELOPMENT"]:
        return
    try:
        conn = psycopg2.connect(settings["DATABASE_URL"], connect_timeout=5)
    except psycopg2.OperationalError:
        return
    try:
        with conn.cursor() as cur:
            cur.execute(_QUERY)
            found = cur.fetchone()
    finally:
        conn.close()
    if found is None:
        return
    role, superuser, owner, rewrite = found
    why = ("is a superuser" if superuser else "owns the audit table" if owner
           else "may update, delete or truncate the audit" if rewrite else None)
    if why:
        raise ConfigError("environment", "DATABASE_URL", f"its role {role!r} {why}: connect web and worker as the "
                          "application role and give the release the owner's MIGRATION_DATABASE_URL (docs/audit.md)")
