"""What isolating one test from the next costs, per test: TRUNCATE of every table (what the suite did),
TRUNCATE of the tables holding rows (what tests/conftest.py's `clean` does now), and a database
cloned from the migrated one (CREATE DATABASE … TEMPLATE, procrastinate's way), with both of
PostgreSQL's strategies; and, for scale, create_app.

    python -m bench.isolation [-n 60]

Each round first writes a few rows, as a test does. Own database on DATABASE_URL's server (embedded
when unset) and a private redis-server, both gone at the end. Prints mean, median and p90 in ms.
"""
import argparse
import statistics
import time

import psycopg2
import redis as redis_lib

from devtools.services import postgres_url, redis_server
from testkit import database


def timed(step, rounds):
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        took.append((time.perf_counter() - started) * 1000)
    return statistics.fmean(took), statistics.median(took), sorted(took)[int(0.9 * len(took))]


def write_rows(url):
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("INSERT INTO contacts (user_id, email) SELECT gen_random_uuid(), 'a@example.com'"
                    " FROM generate_series(1, 5)")
    conn.close()


def flush(redis_url):
    client = redis_lib.Redis.from_url(redis_url)
    client.flushall()
    client.close()


def truncate_every_table(url, redis_url):
    write_rows(url)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> 'schema_migrations'")
        database._truncate(cur, [row[0] for row in cur.fetchall()])
    conn.close()
    flush(redis_url)


def truncate_tables_holding_rows(url, redis_url):
    write_rows(url)
    database.empty_tables(url)
    flush(redis_url)


def cloner(server_url, template, redis_url, strategy=""):
    admin = psycopg2.connect(database.with_dbname(server_url, "postgres"))
    admin.autocommit = True
    count = [0]

    def clone():
        count[0] += 1
        name = f"{template}_clone_{count[0]}"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" {strategy}')
        write_rows(database.with_dbname(server_url, name))
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{name}"')
        flush(redis_url)
    return clone, admin.close


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=60, help="rounds of each")
    args = parser.parse_args(argv)
    server_url, stop_postgres = postgres_url()
    redis = redis_server()
    closers = []
    try:
        with database.Database(server_url, prefix="bench_isolation") as db:
            rows = [("TRUNCATE every table + FLUSHALL", lambda: truncate_every_table(db.url, redis.url)),
                    ("TRUNCATE the tables holding rows + FLUSHALL",
                     lambda: truncate_tables_holding_rows(db.url, redis.url))]
            for label, strategy in (("CREATE DATABASE … TEMPLATE + DROP + FLUSHALL", ""),
                                    ("the same, STRATEGY FILE_COPY", "STRATEGY FILE_COPY")):
                clone, close = cloner(server_url, db.name, redis.url, strategy)
                rows.append((label, clone))
                closers.append(close)

            def app():
                from app import create_app
                create_app(database.service_env(db.url, redis.url)).extensions["db_pool"].close()
            rows.append(("create_app (for scale)", app))
            for label, step in rows:
                mean, median, p90 = timed(step, args.n)
                print(f"{label:48} mean {mean:6.1f} ms, median {median:6.1f} ms, p90 {p90:6.1f} ms", flush=True)
            for close in closers:
                close()
    finally:
        redis.stop()
        stop_postgres()


if __name__ == "__main__":
    main()
