"""SQL of Web Push subscriptions. One row per endpoint: a browser that subscribes again (new keys
after a reinstall) replaces its row, and an endpoint moves to whichever user subscribed it last."""
import uuid

from ..db import cursor

MAX_PER_USER = 10
COLUMNS = "id, user_id, endpoint, p256dh, auth, expires_at, created_at"


def for_user(conn, user_id):
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM webpush_subscriptions WHERE user_id = %s ORDER BY created_at, id",
                    (str(user_id),))
        return cur.fetchall()


def save(conn, user_id, body):
    """Insert or replace the subscription of `body["endpoint"]` for the user; None when the user
    already has MAX_PER_USER others. The caller's transaction; concurrent subscribes of one user are
    serialised by a row-less advisory lock on the user."""
    with cursor(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended('webpush:' || %s, 0))", (str(user_id),))
        cur.execute("SELECT count(*) AS n FROM webpush_subscriptions WHERE user_id = %s AND endpoint <> %s",
                    (str(user_id), body["endpoint"]))
        if cur.fetchone()["n"] >= MAX_PER_USER:
            return None
        cur.execute(f"INSERT INTO webpush_subscriptions ({COLUMNS})"
                    " VALUES (%(id)s, %(user)s, %(endpoint)s, %(p256dh)s, %(auth)s, %(expires)s, now())"
                    " ON CONFLICT (endpoint) DO UPDATE SET user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh,"
                    " auth = EXCLUDED.auth, expires_at = EXCLUDED.expires_at"
                    f" RETURNING {COLUMNS}",
                    {"id": str(uuid.uuid4()), "user": str(user_id), "endpoint": body["endpoint"],
                     "p256dh": body["keys"]["p256dh"], "auth": body["keys"]["auth"],
                     "expires": body.get("expirationTime")})
        return cur.fetchone()


def delete(conn, user_id, subscription_id):
    """True when the user's subscription existed (another user's id is as good as a missing one)."""
    with cursor(conn) as cur:
        cur.execute("DELETE FROM webpush_subscriptions WHERE id = %s AND user_id = %s",
                    (str(subscription_id), str(user_id)))
        return cur.rowcount == 1


def forget_endpoint(conn, subscription_id):
    """The push service said the subscription is gone (404/410): stop sending to it."""
    with cursor(conn) as cur:
        cur.execute("DELETE FROM webpush_subscriptions WHERE id = %s RETURNING user_id", (str(subscription_id),))
        row = cur.fetchone()
        return row["user_id"] if row else None
