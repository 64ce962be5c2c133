"""The fault scenarios at full size, from the command line (tests/faults/test_faults.py runs the short
ones in CI): prints each scenario's figures, exits non-zero when anything was lost or duplicated.

    python -m bench.faults <scenario> [--full] [-n N] [--minutes M]
    scenarios: crash, redis, postgres, smtp, slow, vanished, shutdown, soak, all (all but soak)

A database of its own on DATABASE_URL's server (embedded when unset) and a private redis-server,
both gone at the end; the scenarios themselves are tests/faults/<scenario>.py.
"""
import argparse
import sys
import tempfile

from devtools.services import postgres_url, redis_server
from testkit.database import Database, clean, service_env
from tests.faults import FULL, MAIN_COUNT, SCENARIOS, SHORT
from tests.faults.rig import Rig


def run(name, env, redis, params):
    clean(env["MIGRATION_DATABASE_URL"], redis)
    rig = Rig(env, redis, tempfile.mkdtemp(prefix=f"faults-{name}-"))
    try:
        result = SCENARIOS[name](rig, **params)
    finally:
        rig.close()
    print(result.line, flush=True)
    for problem in result.problems:
        print(f"  FAIL {name}: {problem}", flush=True)
    return result.ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--full", action="store_true", help="the large version (default: the CI size)")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    parser.add_argument("-n", type=int, help="the scenario's main count (crash/smtp: n, redis: k, shutdown: users)")
    args = parser.parse_args(argv)
    names = [s for s in SCENARIOS if s != "soak"] if args.scenario == "all" else [args.scenario]
    server_url, stop_postgres = postgres_url()
    redis = redis_server()
    ok = True
    try:
        with Database(server_url, prefix="notif_faults") as database:
            env = service_env(database.url, redis.url)
            for name in names:
                params = dict((FULL if args.full else SHORT).get(name, {}))
                if name == "soak":
                    params["minutes"] = args.minutes
                if args.n:
                    params[MAIN_COUNT.get(name, "n")] = args.n
                ok = run(name, env, redis, params) and ok
    finally:
        redis.stop()
        stop_postgres()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
