"""Emails sent per second by ONE delivery worker against a local SMTP server (a unit figure of
docs/scaling.md).

    python -m bench.emails [-n 2000] [--rate-limits off]

One trigger to `n` users who each have an email address (the email channel on); the dispatch job
stores it first (untimed); then the real delivery jobs (RQ SimpleWorker in this process, burst,
one job per delivery: claim, preferences, render, SMTP, receipt) run against testkit's
`SMTPProcess` (aiosmtpd in a process of its own, on this machine): emails/s and the worker's CPU
per email. Own database (on DATABASE_URL's server, else the embedded one) and Redis. The shipped
defaults, rate limits on (the result says which).
"""
import argparse
import contextlib
import json
import os
import tempfile
import time
import uuid

import psycopg2
import psycopg2.extras

from bench.rig import add_rate_limits_option, shipped_env
from devtools.services import postgres_url, redis_server
from testkit.api import trigger
from testkit.config_files import channel_config
from testkit.database import Database, service_env
from testkit.jobs import run_jobs
from testkit.processes import cpu_seconds
from testkit.providers import SMTPProcess


@contextlib.contextmanager
def email_service(n, prefix, rate_limits="on"):
    """(app, SMTP server, user ids): an app with the shipped defaults (rate limits as given) and the
    email channel on, on a database (DATABASE_URL's server, else the embedded one) and a Redis of
    its own, sending to testkit's `SMTPProcess`, and `n` users who each have an address. Everything
    is stopped and dropped at the end."""
    from app import create_app
    server_url, stop_postgres = postgres_url()
    redis = redis_server()
    database = Database(server_url, prefix=prefix)
    env = shipped_env(service_env(database.url, redis.url), rate_limits)
    smtp = SMTPProcess().start()
    try:
        config = channel_config(tempfile.mkdtemp(prefix=f"{prefix}-"), {"email": {"enabled": True}})
        app = create_app(dict(env, **config, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(smtp.port),
                              MAIL_DEFAULT_SENDER="notify@bank.example", MAIL_TIMEOUT="5"))
        users = [(str(uuid.uuid4()), f"u{i}@example.com") for i in range(n)]
        with psycopg2.connect(env["DATABASE_URL"]) as conn, conn.cursor() as cur:
            psycopg2.extras.execute_values(cur, "INSERT INTO contacts (user_id, email) VALUES %s", users)
        conn.close()
        yield app, smtp, [user_id for user_id, _ in users]
        app.extensions["db_pool"].close()
    finally:
        smtp.stop()
        database.drop()
        redis.stop()
        stop_postgres()


def run(n, rate_limits="on"):
    with email_service(n, "bench_emails", rate_limits) as (app, smtp, users):
        trigger(app.test_client(), users, title="bench")
        run_jobs(app, ["dispatch"])
        cpu0, started = cpu_seconds(os.getpid()), time.monotonic()
        run_jobs(app, ["deliveries"])
        seconds, cpu = time.monotonic() - started, cpu_seconds(os.getpid()) - cpu0
        sent = len(smtp.messages)
    if sent != n:
        raise RuntimeError(f"{sent} of {n} emails sent")
    return {"rate_limits": rate_limits, "emails": sent, "seconds": round(seconds, 2), "emails_per_second": round(sent / seconds, 1),
            "worker_cpu_ms_per_email": round(cpu / sent * 1000, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="emails (one trigger to this many users)")
    add_rate_limits_option(parser)
    args = parser.parse_args()
    print(json.dumps(run(args.n, args.rate_limits)))


if __name__ == "__main__":
    main()
