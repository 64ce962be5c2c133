"""Recording `sent` the instant the provider accepted a message.

SMTP and most provider APIs have no idempotency we can lean on: a worker
killed after the provider took a message and before the delivery row says
`sent` sends it again once the claim lease runs out. The receipt makes that
window as narrow as it can be. Its statement is written out (mogrified)
before the channel talks to the provider, with a hole for the provider's
message id; the channel calls the receipt the moment the provider surely has
the message (email: the instant DATA's final dot is sent, before the answer
is read, see `Receipt.submit`; an API: its 2xx read), and the receipt fills
the hole and sends ONE statement on an autocommit connection: one round
trip, one transaction. What is left between the provider having the message
and the record is a few microseconds of code (an API: reading its reply) and
handing a few hundred bytes to the kernel. PostgreSQL
runs a query it has received even if the client dies right after sending it
(unless `client_connection_check_interval` is set on the server), so a kill
after that point no longer causes a resend.

The statement is idempotent per attempt (a second run for the same attempt
changes nothing), so a record whose connection broke on the way, when we
cannot know whether it committed, is simply run again (`record_late`).
"""
import contextlib
import json
import logging
import secrets
import time

import psycopg2
from psycopg2.extensions import adapt

from .. import db

log = logging.getLogger(__name__)
LATE_RECORD_SECONDS = 30   # how long a failed record is retried: inside the job's timeout and the lease

SENT_SQL = (
    "WITH sent AS (UPDATE deliveries SET status = 'sent', updated_at = now(), locked_until = NULL,"
    " provider_message_id = coalesce(%(pid)s, provider_message_id), sent_at = now()"
    " WHERE id = %(id)s AND NOT EXISTS (SELECT 1 FROM delivery_attempts"
    " WHERE delivery_id = %(id)s AND attempt = %(attempt)s AND outcome = 'sent') RETURNING id, notification_seq)"
    " INSERT INTO delivery_attempts (delivery_id, notification_seq, attempt, outcome, provider_message_id, provider,"
    " started_at, resolution) SELECT id, notification_seq, %(attempt)s, 'sent', %(pid)s, %(provider)s,"
    " %(started_at)s, %(resolution)s::jsonb FROM sent")


def _params(claimed, provider_id, provider=None):
    return {"id": claimed["id"], "attempt": claimed["attempts"], "started_at": claimed["started_at"],
            "pid": provider_id, "provider": provider, "resolution": resolution_json(claimed)}


def resolution_json(claimed):
    """What the attempt was decided on (deliver.py's `resolution`), as JSON text for its attempt row."""
    resolution = claimed.get("resolution")
    return None if resolution is None else json.dumps(resolution, sort_keys=True)


def record_sent(conn, claimed, provider_id, provider=None):
    """The receipt's statement, run as an ordinary query (the caller commits)."""
    with conn.cursor() as cur:
        cur.execute(SENT_SQL, _params(claimed, provider_id, provider))


class Receipt:
    """`accepted(provider_id)` for one claimed delivery: records it as sent in one round trip.

    Used as a context manager around the send: the connection is in autocommit
    for the block (so no BEGIN or COMMIT round trip is added) and back to
    transactions after it. Never raises a database error into the channel:
    a failed record is kept in `error`, and `record_late` completes it.
    """

    def __init__(self, conn, claimed):
        self.conn, self.claimed = conn, claimed
        self.accepted = self.recorded = self.submitted = False
        self.provider_id = self.error = self.provider = None
        hole, provider_hole = secrets.token_hex(16), secrets.token_hex(16)
        with conn.cursor() as cur:
            text = cur.mogrify(SENT_SQL, _params(claimed, hole, provider_hole))
        self._parts = text.split(adapt(hole).getquoted())
        self._provider_hole = adapt(provider_hole).getquoted()
        assert len(self._parts) == 3, "the provider id appears twice in SENT_SQL"

    def __enter__(self):
        self.conn.autocommit = True
        self._cursor = self.conn.cursor()
        return self

    def __exit__(self, *exc):
        with contextlib.suppress(psycopg2.Error):
            self._cursor.close()
        with contextlib.suppress(psycopg2.Error):   # a broken connection is closed by the pool
            self.conn.autocommit = False

    def __call__(self, provider_id=None, provider=None):
        """The provider accepted the message: record it now, before anything else happens.
        `provider`: which of the channel's providers (app/channels/failover.py), if it has several."""
        if not self.accepted:
            self.accepted = True
            self.submit(provider_id, provider)

    def submit(self, provider_id=None, provider=None):
        """The whole message is on its way and the provider's answer not read yet: record it now.

        For SMTP, called the instant DATA's final dot was handed to the kernel. Between the
        server having the message and this record leaving the worker there is then no reply
        to wait for and no wake-up, only the few microseconds of code between two system
        calls, so a worker killed there (and its message sent again after the lease) becomes
        rare. A worker killed after it and before a refusal leaves a delivery recorded as sent
        that the server refused: the one case this trades for the duplicate. A live worker
        that then reads a refusal, or no answer, undoes the record (`unrecord`) and the
        attempt goes the usual way."""
        self.submitted = True
        if not self.recorded:
            self._record(provider_id, provider)

    def _quoted(self, value):
        quoted = adapt(value)
        if hasattr(quoted, "prepare"):
            quoted.prepare(self.conn)
        return quoted.getquoted()

    def _record(self, provider_id, provider):
        provider_id = None if provider_id is None else str(provider_id)
        self.provider_id, self.provider = provider_id, provider
        try:
            statement = self._quoted(provider_id).join(self._parts)
            self._cursor.execute(statement.replace(self._provider_hole, self._quoted(provider)))
            self.recorded = True
        except psycopg2.Error as exc:
            self.error = exc


UNSENT_SQL = (
    "WITH gone AS (DELETE FROM delivery_attempts WHERE delivery_id = %(id)s AND attempt = %(attempt)s"
    " AND outcome = 'sent' RETURNING delivery_id)"
    " UPDATE deliveries SET sent_at = NULL, provider_message_id = NULL WHERE id IN (SELECT delivery_id FROM gone)")


def unrecord(conn, claimed):
    """Take back a submitted record whose provider then refused or never answered (the caller
    commits, with the attempt's real outcome in the same transaction). A no-op when the record
    never reached PostgreSQL; run whenever one was submitted, since a record whose connection
    broke on the way may have committed all the same."""
    with conn.cursor() as cur:
        cur.execute(UNSENT_SQL, _params(claimed, None))


def record_late(claimed, provider_id, patience=LATE_RECORD_SECONDS, provider=None):
    """Record an accepted send whose receipt failed (PostgreSQL restarting, a broken connection),
    on fresh connections, until it is stored or `patience` runs out (then raise: the send may be
    repeated after the lease, the one case left)."""
    deadline, pause = time.monotonic() + patience, 0.2
    while True:
        try:
            with db.connection() as conn, db.transaction(conn):
                record_sent(conn, claimed, provider_id, provider)
            return
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                log.error("delivery %s was accepted by the provider but could not be recorded: %s",
                          claimed["id"], exc)
                raise
            log.warning("delivery %s accepted, record failed (%s); trying again in %.1f s",
                        claimed["id"], type(exc).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
