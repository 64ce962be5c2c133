"""The db pool under gevent: queries of concurrent greenlets overlap, a full pool waits cooperatively.

Each check runs in a subprocess, so gevent's monkey patching never leaks into
the test process. This is a correctness check of cooperative I/O (the web
workers are gevent workers), not a benchmark: the bounds are wide.
"""
import json
import subprocess
import sys
import textwrap

import pytest

from devtools.services import REPO_ROOT

pytestmark = pytest.mark.slow   # each check is a Python process of its own
REPO = str(REPO_ROOT)

PRELUDE = """
import json, sys, time
from gevent import monkey
monkey.patch_all()
if PATCH_PSYCOPG:
    from psycogreen.gevent import patch_psycopg
    patch_psycopg()
import gevent
from app.db import Pool
from app.errors import ServiceUnavailable

DSN = sys.argv[1]


def sleeper(pool, seconds=0.5):
    with pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_sleep(%s)", (seconds,))
        pid = cur.fetchone()[0]
        conn.rollback()
        return pid


def timed(pool, count):
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(1000)])
    start = time.monotonic()
    greenlets = [gevent.spawn(sleeper, pool) for _ in range(count)]
    gevent.joinall(greenlets, raise_error=True)
    elapsed = time.monotonic() - start
    ticker.kill()
    return {"elapsed": elapsed, "pids": [g.value for g in greenlets], "ticks": len(ticks)}
"""


def run(database_url, body, patch_psycopg=True):
    script = f"PATCH_PSYCOPG = {patch_psycopg!r}\n" + PRELUDE + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script, database_url], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_five_queries_overlap(database_url):
    out = run(database_url, """
        pool = Pool(DSN, size=5, timeout=5)
        timed(pool, 1)                       # warm up: connect once outside the measurement
        print(json.dumps(timed(pool, 5)))
    """)
    assert out["elapsed"] < 1.5, out        # serial would be >= 2.5 s
    assert out["elapsed"] >= 0.5, out
    assert len(set(out["pids"])) == 5       # five server sessions at once
    assert out["ticks"] >= 5                # the hub kept running other greenlets meanwhile


def test_without_psycogreen_they_would_not(database_url):
    """Control: the same script without patch_psycopg is serial, so the check above can fail."""
    out = run(database_url, """
        pool = Pool(DSN, size=5, timeout=10)
        print(json.dumps(timed(pool, 5)))
    """, patch_psycopg=False)
    assert out["elapsed"] >= 2.4, out


def test_full_pool_waits_cooperatively_then_times_out(database_url):
    out = run(database_url, """
        pool = Pool(DSN, size=2, timeout=5)
        waves = timed(pool, 6)               # 6 queries through 2 connections: 3 waves
        small = Pool(DSN, size=1, timeout=0.2)
        holder = gevent.spawn(sleeper, small, 0.6)
        gevent.sleep(0.1)
        start = time.monotonic()
        try:
            small.get()
            refused = None
        except ServiceUnavailable as exc:
            refused = exc.status
        waited = time.monotonic() - start
        holder.join()
        again = small.get()                  # the slot came back when the holder finished
        small.put(again)
        print(json.dumps({"waves": waves, "refused": refused, "waited": waited,
                          "idle": len(pool._idle)}))
    """)
    waves = out["waves"]
    assert 1.4 <= waves["elapsed"] < 2.5, waves
    assert len(set(waves["pids"])) <= 2     # never more connections than the pool size
    assert waves["ticks"] >= 10
    assert out["refused"] == 503
    assert 0.15 <= out["waited"] < 0.8, out
    assert out["idle"] <= 2
