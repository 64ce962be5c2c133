"""SQL of contacts. Every function takes the connection first and never commits."""
from ..db import cursor

FIELDS = ("email", "phone", "locale", "timezone")
COLUMNS = "user_id, email, phone, locale, timezone, updated_at"


def get(conn, user_id):
    """The user's contact row, or None."""
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM contacts WHERE user_id = %s", (user_id,))
        return cur.fetchone()


def upsert(conn, user_id, contact):
    """Create or replace the user's contact; every field not given is cleared. Returns the row."""
    values = {name: contact.get(name) for name in FIELDS}
    with cursor(conn) as cur:
        cur.execute(
            f"INSERT INTO contacts (user_id, email, phone, locale, timezone, updated_at)"
            f" VALUES (%(user_id)s, %(email)s, %(phone)s, %(locale)s, %(timezone)s, now())"
            f" ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, phone = EXCLUDED.phone,"
            f" locale = EXCLUDED.locale, timezone = EXCLUDED.timezone, updated_at = now()"
            f" RETURNING {COLUMNS}", dict(values, user_id=user_id))
        return cur.fetchone()


def delete(conn, user_id):
    """Forget the user's contact; True when there was one."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM contacts WHERE user_id = %s", (user_id,))
        return cur.rowcount == 1
