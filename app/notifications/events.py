"""Inbox state shared live by every device of a user: unread counts and read/delete sync.

After a change commits, the changed user's streams get named SSE events
(published on their channel, app/bus/codec.py):

    unread    {"unread": N, "by_customer": {"<uuid>" | "none": n}, "by_group": {"<group>": n},
               "ack_pending": N}
    ack       {"ids": [...], "acked_at": "..."}   (acknowledged on some device: app/acks/service.py)
    read      {"ids": [...], "read": true|false}
              read-all: {"all": true, "read": true, "customer_id": ..., "group": ..., "before": ...,
                         "ids": [...]}
    deleted   {"ids": [...]}

A stream hears only about notifications it could list: `read` and `deleted`
are published with the customer of their ids (a read-all once per customer it
touched, in chunks of READ_ALL_CHUNK ids), and the hub gives each to the
streams that may see that customer; a stream limited to customer A never
learns the ids (or the existence) of customer B's notifications. A read-all
event keeps the request's filter (`customer_id`, `group`, `before`) and lists
in `ids` what it changed among what that event's streams may see.

`unread` is what `GET /v1/notifications/unread-count` answers without a
customer filter: every unread in-app notification of the user; a
customer-scoped stream re-counts within its scope instead (app/streams).
`by_group` lists every configured group (0 when none is unread);
`by_customer` only the customers with unread notifications ("none": those of
no customer).

Counts are read from `notification_unread_counts` (migrations_sql/0011),
which PostgreSQL keeps exact in the same transaction as every insert, update
and delete of a notification: one index probe per user, whatever the size of
the inbox (docs/inbox.md shows the plan). The dispatch job reads a whole
chunk of users in one such query.

Publishing is best-effort: the change has committed, so a Redis failure is
logged, not raised. A stream re-reads the counts whenever it (re)connects,
which is when a client could have missed one.
"""
import json
import logging

from .. import replica
from ..bus.codec import EVERYONE, event_message
from ..bus.publisher import publisher
from ..db import uuid_array

log = logging.getLogger(__name__)
READ_ALL_CHUNK = 500     # ids per read-all event: ~20 KB, well under the hub's message cap

# Ids come back as text: the fan-out reads thousands of rows, and parsing each into uuid.UUID
# (psycopg2's uuid adapter) would cost more than the query.
# Zero rows are kept by the triggers (see 0011) and skipped here; each key is one row.
# Less the expired unread ones (migrations_sql/0018: read from the index of the expiring ones), which
# the counters still hold: they change with rows, and an expiry is no change of a row.
_UNREAD = ("SELECT user_id::text, coalesce(customer_id::text, 'none'), type, unread"
           " FROM notification_unread_counts WHERE {users} AND unread > 0{scope}"
           # minus the expired unread ones. Only `expires_at` in WHERE, the rest in FILTER: a WHERE
           # that implied notifications_unread_counts' predicate let the planner walk each user's
           # whole unread set through that index (100 ms for 1,000 users) instead of the few
           # expiring rows of notifications_expiring (0.5 ms), whose INCLUDE holds what FILTER reads.
           " UNION ALL SELECT user_id::text, coalesce(customer_id::text, 'none'), type,"
           " -count(*) FILTER (WHERE read_at IS NULL AND deleted_at IS NULL AND in_app)::integer"
           " FROM notifications WHERE {users} AND expires_at <= now(){scope} GROUP BY 1, 2, 3"
           " HAVING count(*) FILTER (WHERE read_at IS NULL AND deleted_at IS NULL AND in_app) > 0"
           # and the notices awaiting acknowledgement (no customer: the row that says so; 0019's index)
           " UNION ALL SELECT user_id::text, NULL, NULL, count(*)::integer FROM notifications WHERE {users}"
           " AND ack_required AND acked_at IS NULL AND deleted_at IS NULL AND in_app"
           " AND (expires_at IS NULL OR expires_at > now()){scope} GROUP BY 1")


def _payloads(rows, user_ids, groups):
    """{user id (str): payload} for every user asked about, from (user, customer, group, count) rows."""
    empty_groups = dict.fromkeys(groups, 0)
    out = {uid: {"unread": 0, "by_customer": {}, "by_group": dict(empty_groups), "ack_pending": 0}
           for uid in user_ids}
    for user_id, customer, group, count in rows:
        payload = out[user_id]
        if customer is None:
            payload["ack_pending"] = count
            continue
        payload["unread"] += count
        by_customer, by_group = payload["by_customer"], payload["by_group"]
        by_customer[customer] = by_customer.get(customer, 0) + count
        by_group[group] = by_group.get(group, 0) + count
    for payload in out.values():   # a customer whose unread ones all expired is no longer listed
        payload["by_customer"] = {k: n for k, n in payload["by_customer"].items() if n > 0}
    return out


def unread_counts(conn, user_id, domain, customer_id=None, customers=None):
    """One user's counts; `customer_id` narrows to one customer, `customers` (a token's
    claim) to those customers plus notifications of no customer."""
    scope, params = "", {"user": user_id}
    if customer_id is not None:
        scope, params["customer"] = " AND customer_id = %(customer)s", customer_id
    elif customers is not None:
        scope = " AND (customer_id = ANY(%(customers)s::uuid[]) OR customer_id IS NULL)"
        params["customers"] = uuid_array(customers)
    with conn.cursor() as cur:
        cur.execute(_UNREAD.format(users="user_id = %(user)s", scope=scope), params)
        rows = cur.fetchall()
    return _payloads(rows, [str(user_id)], domain.groups)[str(user_id)]


def unread_counts_many(conn, user_ids, domain):
    """{user id (str): counts} for many users in one query (the dispatch job's chunk)."""
    user_ids = [str(u) for u in user_ids]
    if not user_ids:
        return {}
    with conn.cursor() as cur:
        cur.execute(_UNREAD.format(users="user_id = ANY(%(users)s::uuid[])", scope=""),
                    {"users": uuid_array(user_ids)})
        rows = cur.fetchall()
    return _payloads(rows, user_ids, domain.groups)


def unread_json(conn, user_id, domain, scope=None):
    """The `unread` event's data for one user's stream, as compact JSON.

    `scope` is the stream's customer filter (app/streams): None for every
    customer; a set of customer ids, with "" when notifications of no customer
    count too (a token's `customers` claim), without it for `?customer_id=`.
    """
    if scope is None:
        counts = unread_counts(conn, user_id, domain)
    elif "" in scope:
        counts = unread_counts(conn, user_id, domain, customers=[c for c in scope if c])
    else:
        counts = unread_counts(conn, user_id, domain, customer_id=next(iter(scope)))
    return json.dumps(counts, separators=(",", ":"))


def about(name, customer_id, payload):
    """A `read` or `deleted` event about notifications of one customer (None: of no customer)."""
    return name, str(customer_id) if customer_id else None, payload


def read_all(changed, customer_id, group, before):
    """The events of a read-all that changed `changed` ((id, customer id) pairs): per customer,
    in chunks, each listing only that customer's ids."""
    by_customer = {}
    for notification_id, customer in changed:
        by_customer.setdefault(str(customer) if customer else None, []).append(str(notification_id))
    base = {"all": True, "read": True, "customer_id": str(customer_id) if customer_id else None,
            "group": group, "before": before}
    return [("read", customer, dict(base, ids=ids[start:start + READ_ALL_CHUNK]))
            for customer, ids in by_customer.items() for start in range(0, len(ids), READ_ALL_CHUNK)]


def publish(app, events):
    """events: (user_id, name, audience, payload), sent in one batch; never raises. `audience`:
    EVERYONE (`unread`) or the customer (None: none) the event's ids belong to."""
    pairs = [(user_id, event_message(name, payload, audience)) for user_id, name, audience, payload in events]
    if not pairs:
        return 0
    try:
        return publisher(app).publish(pairs)
    except Exception as exc:  # Redis down: the change stands; streams re-count when they reconnect
        log.warning("state events not published (%s): %d message(s)", type(exc).__name__, len(pairs))
        return 0


def after_change(app, conn, user_id, *events):
    """Publish `events` ((name, customer, payload), from `about` or `read_all`) and then the
    user's fresh `unread` counts.

    Call after the transaction committed, on the same connection: the counts
    include the change. First the user's reads are pinned to the primary until a replica has the
    change (app/replica.py), so a client that refetches on the event sees it.
    """
    replica.wrote(conn, user_id)
    messages = [(user_id, name, customer, payload) for name, customer, payload in events]
    try:
        messages.append((user_id, "unread", EVERYONE, unread_counts(conn, user_id, app.config["DOMAIN"])))
    except Exception as exc:  # the change committed; a count we cannot read now is sent with the next one
        log.warning("unread counts not computed (%s)", type(exc).__name__)
    return publish(app, messages)


def publish_counts(app, conn, user_ids):
    """The fan-out's `unread` for a chunk's users: one count query, one publish."""
    counts = unread_counts_many(conn, user_ids, app.config["DOMAIN"])
    return publish(app, ((uid, "unread", EVERYONE, payload) for uid, payload in counts.items()))
