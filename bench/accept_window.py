"""How long a worker kill can still cause a resend: from the SMTP server having a message to its record.

    python -m bench.accept_window [-n 500]

A duplicate email needs the worker to die after the SMTP server has a whole message
(it answers 250 to DATA and keeps it, whether the client is still there or not) and
before the statement that records the delivery as sent is on its way to PostgreSQL.
This measures that window for N deliveries, on one clock (the machine's):

- start: the SMTP server (testkit/providers.py `SMTPProcess`: aiosmtpd in a process
  of its own, answering without parsing the message first) reads `time.time()` when it
  has the whole message, just before it answers 250;
- end: the worker reads the same clock just before it hands to psycopg2 the statement
  that commits the record: the receipt's one autocommit statement, or (the older
  design) the COMMIT after QUIT, UPDATE and INSERT; psycopg2's C call to send()
  follows within microseconds;
- and the worker's own share: from smtplib handing the message and its final dot to the
  kernel to the same end (the record goes out then, before the 250 is read:
  `Receipt.submit`). A record that leaves before the server has the message counts as a
  window of 0.

The worker runs the real `deliver` job in-process (RQ SimpleWorker, burst), one
delivery at a time. Own database and Redis, as `python -m bench.faults`. Not a test: it prints
p50 / p99 / max and the mean, and checks only that every email was sent once.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from testkit.api import trigger
from testkit.jobs import run_jobs
from tests.faults.crash import quantiles

RECORDS = []   # time.time() at which a "sent" record was handed over to be committed
DOTS = []      # time.time() at which smtplib's send of the message and its final dot returned


def stamping_smtp():
    """smtplib's send, stamping DOTS when the whole message (final dot included) is with the kernel."""
    import smtplib
    send = smtplib.SMTP.send

    def stamped(self, s):
        send(self, s)
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            DOTS.append(time.time())
    smtplib.SMTP.send = stamped


def stamping_connect():
    """psycopg2.connect whose connections stamp RECORDS when a sent record goes out to commit."""
    import psycopg2
    import psycopg2.extensions

    def is_record(query):
        text = query if isinstance(query, bytes) else str(query).encode()
        return b"UPDATE deliveries SET status = 'sent'" in text   # (dispatch's own rows are INSERTs)

    class Cursor(psycopg2.extensions.cursor):
        def execute(self, query, vars=None):
            if is_record(query) or (vars and is_record(self.mogrify(query, vars))):
                if self.connection.autocommit:
                    RECORDS.append(time.time())     # commits by itself
                else:
                    self.connection.record_pending = True   # commits with the transaction
            return super().execute(query, vars)

    class Connection(psycopg2.extensions.connection):
        record_pending = False

        def commit(self):
            if self.record_pending:
                RECORDS.append(time.time())
                self.record_pending = False
            return super().commit()

    real = psycopg2.connect

    def connect(*args, **kwargs):
        conn = real(*args, connection_factory=Connection, **kwargs)
        conn.cursor_factory = Cursor
        return conn
    return connect


def run(n):
    from app import db as app_db
    from bench.emails import email_service
    app_db.psycopg2.connect = stamping_connect()
    stamping_smtp()
    # Rate limits off: its one-user triggers come faster than one API key's `rate_limits.trigger`,
    # and what it measures is inside the worker (printed with the result).
    with email_service(n, "notif_window", rate_limits="off") as (app, smtp, users):
        client = app.test_client()
        for user_id in users:
            trigger(client, [user_id], title="window")
        run_jobs(app)
        messages = list(smtp.messages)
    accepted = [m["at"] for m in messages]
    messages = len(messages)
    return accepted, messages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="deliveries to measure")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    accepted, messages = run(args.n)
    if messages != args.n or len(RECORDS) != args.n or len(accepted) != args.n:
        raise SystemExit(f"{messages} messages, {len(accepted)} accepted, {len(RECORDS)} records; want {args.n}")
    # one delivery at a time: each acceptance and its record come before the next delivery's
    pairs = list(zip(sorted(accepted), sorted(RECORDS)))
    early = sum(1 for a, r in pairs if r <= a)
    window = sorted(max(0.0, r - a) * 1e6 for a, r in pairs)
    worker = sorted((r - d) * 1e6 for d, r in zip(sorted(DOTS), sorted(RECORDS)))
    print(f"{args.n} deliveries (rate limits off), load {load:.2f} -> {os.getloadavg()[0]:.2f}:\n"
          f"  SMTP server has the message -> sent record handed to PostgreSQL: {quantiles(window)} µs,"
          f" mean {statistics.fmean(window):.0f} µs; {early} of {args.n} records left before the server"
          f" had the message (window 0)\n"
          f"  in the worker, final dot handed to the kernel -> record handed over: {quantiles(worker)} µs,"
          f" mean {statistics.fmean(worker):.0f} µs")


if __name__ == "__main__":
    main()
