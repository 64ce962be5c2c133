"""Which partitioning keeps the inbox and the replay on index scans with pruning: monthly ranges of
`created_at`, or ranges of `seq`? (docs/scaling.md, "Partitioned history").

    python -m bench.partitions [--rows 2000000] [--users 20000] [--months 12]

On a PostgreSQL server of its own (devtools/postgres_server.py), three copies of the same rows —
unpartitioned, partitioned by month of `created_at`, partitioned by equal ranges of `seq` — with
the inbox's covering index (migration 0009's), then for a user picked at random: the inbox page
(`ORDER BY seq DESC LIMIT 50`), its total count, and a replay after a cursor (`seq > $1 ORDER BY
seq LIMIT 501`), each as a prepared statement with a generic plan (what the pool runs after five
executions), EXPLAIN (ANALYZE, BUFFERS): the plan's shape, partitions scanned, buffers and time
(median of 20 users). Prints one table; nothing is kept.
"""
import argparse
import random
import re
import statistics

import psycopg2

from devtools.postgres_server import PostgresServer

COLUMNS = ("seq bigint NOT NULL, user_id uuid NOT NULL, customer_id uuid, created_at timestamptz NOT NULL,"
           " read_at timestamptz, deleted_at timestamptz, in_app boolean NOT NULL DEFAULT true, title text")
QUERIES = {
    "inbox page": ("SELECT seq FROM {t} WHERE user_id = $1 AND deleted_at IS NULL AND in_app"
                   " ORDER BY seq DESC LIMIT 50", lambda user, cursor: (user,)),
    "inbox count": ("SELECT count(*) FROM {t} WHERE user_id = $1 AND deleted_at IS NULL AND in_app",
                    lambda user, cursor: (user,)),
    "replay after a cursor": ("SELECT seq FROM {t} WHERE user_id = $1 AND seq > $2 AND deleted_at IS NULL"
                              " AND in_app ORDER BY seq LIMIT 501", lambda user, cursor: (user, cursor)),
}


def build(cur, rows, users, months):
    cur.execute(f"CREATE TABLE plain ({COLUMNS})")
    cur.execute(f"CREATE TABLE by_month ({COLUMNS}) PARTITION BY RANGE (created_at)")
    cur.execute(f"CREATE TABLE by_seq ({COLUMNS}) PARTITION BY RANGE (seq)")
    per = rows // months
    for m in range(months):
        cur.execute(f"CREATE TABLE by_month_{m} PARTITION OF by_month FOR VALUES FROM"
                    f" ('2026-01-01'::timestamptz + interval '{m} month')"
                    f" TO ('2026-01-01'::timestamptz + interval '{m + 1} month')")
        cur.execute(f"CREATE TABLE by_seq_{m} PARTITION OF by_seq FOR VALUES FROM ({m * per + 1}) TO"
                    f" ({(m + 1) * per + 1 if m < months - 1 else 'MAXVALUE'})")
    # seq in time order (as the bigserial is): row i at a time proportional to i over `months` months
    cur.execute("CREATE TABLE users AS SELECT gen_random_uuid() AS id, n FROM generate_series(0, %s - 1) n",
                (users,))
    cur.execute("""INSERT INTO plain SELECT i, u.id, NULL,
                     '2026-01-01'::timestamptz + (i::float8 / %s) * (interval '1 month' * %s),
                     CASE WHEN i %% 3 = 0 THEN now() END, NULL, true, 'title ' || i
                   FROM generate_series(1, %s) i JOIN users u ON u.n = (hashint8(i) & 2147483647) %% %s""",
                (rows + 1, months, rows, users))
    for table in ("by_month", "by_seq"):
        cur.execute(f"INSERT INTO {table} SELECT * FROM plain")
    for table in ("plain", "by_month", "by_seq"):
        cur.execute(f"CREATE INDEX ON {table} (user_id, seq DESC) INCLUDE (customer_id, read_at, deleted_at, in_app)")
        cur.execute(f"VACUUM ANALYZE {table}")


def explain(cur, table, name, user, cursor):
    sql, args = QUERIES[name]
    cur.execute("DEALLOCATE ALL")
    types = "uuid" if len(args(user, cursor)) == 1 else "uuid, bigint"
    cur.execute(f"PREPARE q ({types}) AS " + sql.format(t=table))
    params = ", ".join(["%s"] * len(args(user, cursor)))
    cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) EXECUTE q ({params})", args(user, cursor))
    plan = "\n".join(row[0] for row in cur.fetchall())
    scanned = len(re.findall(r"Index Only Scan|Index Scan|Seq Scan", plan))
    never = len(re.findall(r"\(never executed\)", plan))
    removed = sum(int(n) for n in re.findall(r"Subplans Removed: (\d+)", plan))
    buffers = sum(int(n) for n in re.findall(r"Buffers: shared hit=(\d+)", plan.split("\n")[0] + "\n" + plan)[:1])
    ms = float(re.search(r"Execution Time: ([\d.]+) ms", plan).group(1))
    shape = "Merge Append" if "Merge Append" in plan else ("Append" if "Append" in plan else "one index")
    return {"shape": shape, "scans": scanned - never, "removed": removed, "buffers": buffers, "ms": ms, "plan": plan}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--show-plans", action="store_true")
    args = parser.parse_args()
    with PostgresServer() as server:
        conn = psycopg2.connect(server.url())
        conn.autocommit = True
        cur = conn.cursor()
        build(cur, args.rows, args.users, args.months)
        cur.execute("SET plan_cache_mode = force_generic_plan")
        cur.execute("SELECT id FROM users ORDER BY random() LIMIT 20")
        sample = [row[0] for row in cur.fetchall()]
        print(f"{args.rows:,} rows of {args.users:,} users over {args.months} months; generic plans;"
              f" median of {len(sample)} users")
        print(f"{'query':24} | {'table':9} | {'plan':12} | scans run | subplans removed | buffers | ms (median)")
        for name in QUERIES:
            for table in ("plain", "by_month", "by_seq"):
                results = []
                for user in sample:
                    cur.execute(f"SELECT coalesce(max(seq), 0) FROM plain WHERE user_id = %s", (user,))
                    newest = cur.fetchone()[0]
                    results.append(explain(cur, table, name, user, max(newest - args.rows // 100, 0)))
                first = results[0]
                print(f"{name:24} | {table:9} | {first['shape']:12} | {statistics.median(r['scans'] for r in results):9} |"
                      f" {statistics.median(r['removed'] for r in results):16} |"
                      f" {statistics.median(r['buffers'] for r in results):7} |"
                      f" {statistics.median(r['ms'] for r in results):.3f}")
                if args.show_plans:
                    print(first["plan"])
        conn.close()


if __name__ == "__main__":
    main()
