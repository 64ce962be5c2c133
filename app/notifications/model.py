"""The one public shape of a notification, shared by REST, the stream and jobs."""
import datetime

import orjson

# Columns every reader selects, in the order `to_public` expects.
COLUMNS = ("id, seq, user_id, customer_id, type, event, title, content, link_url, link_text,"
           " rec_type, rec_id, read_at, created_at, expires_at, ack_required, ack_deadline, acked_at")


def rfc3339(moment):
    """UTC, millisecond precision, `Z` suffix: what JavaScript's Date parses everywhere."""
    if moment is None:
        return None
    moment = moment.astimezone(datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def to_public(row):
    """A stored row as SPEC's notification object."""
    return {
        "id": str(row["id"]),
        "customer_id": str(row["customer_id"]) if row["customer_id"] else None,
        "type": row["type"],
        "event": row["event"],
        "title": row["title"],
        "content": row["content"],
        "link_url": row["link_url"],
        "link_text": row["link_text"],
        "rec_type": row["rec_type"],
        "rec_id": row["rec_id"],
        "read": row["read_at"] is not None,
        "read_at": rfc3339(row["read_at"]),
        "created_at": rfc3339(row["created_at"]),
        "expires_at": rfc3339(row.get("expires_at")),
        "ack_required": bool(row.get("ack_required")),
        "ack_deadline": rfc3339(row.get("ack_deadline")),
        "acked_at": rfc3339(row.get("acked_at")),
    }


def to_json(row):
    """The public shape as compact JSON (UTF-8 kept as is): encoded once, sent to every stream as is."""
    return orjson.dumps(to_public(row)).decode()


_ID = "\x00"   # the id's stand-in: JSON "\u0000"; PostgreSQL text holds no NUL, and the id is the first key


def to_json_many(rows):
    """`to_json` of every row. A trigger's notifications differ only in their id (and user), so
    each distinct rest is encoded once and the ids are put into it: a fan-out encodes once, not
    once per user."""
    templates, out = {}, []
    for row in rows:
        key = (row["customer_id"], row["type"], row["event"], row["title"], row["content"], row["link_url"],
               row["link_text"], row["rec_type"], row["rec_id"], row["read_at"], row["created_at"],
               row.get("expires_at"), row.get("ack_required"), row.get("ack_deadline"), row.get("acked_at"))
        template = templates.get(key)
        if template is None:
            template = templates[key] = to_json(dict(row, id=_ID)).split('"\\u0000"', 1)
        head, tail = template
        out.append(f'{head}"{row["id"]}"{tail}')
    return out
