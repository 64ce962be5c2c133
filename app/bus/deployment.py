"""Which deployment a process belongs to, so that what it shares in Redis carries its own name.

Redis pub/sub ignores database numbers and RQ keeps its registries under fixed `rq:`
names, so two deployments on one Redis (staging on /7, production on /0) under one
prefix hear each other's streams and take each other's jobs. A deployment is its
database: web, worker and release of one deployment share it, another deployment
has another. So when REDIS_PREFIX is not set, it is derived from the database's
identity: PostgreSQL's system identifier (made by initdb, unique per cluster) and
the database's name, hashed short, giving `notif:<12 hex digits>:`. Blue and green
of one deployment get the same prefix; a staging database cloned from production
by dump and restore gets another. An explicit REDIS_PREFIX wins.
"""
import hashlib
import logging
import time

import psycopg2

from ..errors import ConfigError

log = logging.getLogger(__name__)
IDENTITY_SQL = "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database()"
# Where pg_control_system() is not granted (some managed services): the cluster's own address and
# the database's oid stand in. Weaker (two clusters behind one address could collide), hence a warning.
FALLBACK_SQL = ("SELECT concat_ws('/', inet_server_addr(), inet_server_port(),"
                " (SELECT oid FROM pg_database WHERE datname = current_database())), current_database()")


def identity(conn):
    """(cluster identity, database name) of the database `conn` is on."""
    with conn.cursor() as cur:
        try:
            cur.execute(IDENTITY_SQL)
            return cur.fetchone()
        except psycopg2.errors.InsufficientPrivilege:
            conn.rollback()
            log.warning("pg_control_system() is not granted: REDIS_PREFIX derived from the server's address "
                        "and the database's oid; set REDIS_PREFIX explicitly to be sure")
            cur.execute(FALLBACK_SQL)
            return cur.fetchone()


def prefix_for(system_identifier, database):
    """The Redis prefix of the deployment on that database."""
    digest = hashlib.sha256(f"{system_identifier}/{database}".encode()).hexdigest()[:12]
    return f"notif:{digest}:"


def derive_prefix(dsn, wait_seconds=30.0):
    """Ask the database who it is; waits for it up to `wait_seconds` (a deploy racing a restart)."""
    deadline, delay = time.monotonic() + wait_seconds, 0.5
    while True:
        try:
            conn = psycopg2.connect(dsn, connect_timeout=5)
            try:
                return prefix_for(*identity(conn))
            finally:
                conn.close()
        except psycopg2.OperationalError as exc:
            if time.monotonic() + delay > deadline:
                raise ConfigError("environment", "REDIS_PREFIX", "is not set, and the database it is derived from "
                                  f"did not answer for {wait_seconds:.0f} s ({type(exc).__name__})")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def init_app(app):
    """Settle REDIS_PREFIX before anything names a key, a channel or a queue with it."""
    if app.config.get("REDIS_PREFIX"):
        return
    app.config["REDIS_PREFIX"] = derive_prefix(app.config["DATABASE_URL"])
    log.info("REDIS_PREFIX derived from the database's identity: %s", app.config["REDIS_PREFIX"])
