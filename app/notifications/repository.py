"""SQL for the inbox. Every function takes the connection first and never commits."""
from ..db import cursor, execute_prepared
from .model import COLUMNS


# The user's expired notifications, read from the small index of the expiring ones
# (notifications_expiring, migrations_sql/0018) and left out of an inbox scan that stays
# index-only (a hashed NOT IN), rather than an `expires_at` test that reads every row's heap.
NOT_EXPIRED = ("seq NOT IN (SELECT seq FROM notifications WHERE user_id = %(user_id)s"
               " AND expires_at IS NOT NULL AND expires_at <= now())")


def _scope(user_id, customer_id, customers, status, include_expired=False, ack=None, not_expired=NOT_EXPIRED):
    """WHERE clause and parameters shared by the list and its counts."""
    where = ["user_id = %(user_id)s", "deleted_at IS NULL", "in_app"]
    if ack == "pending":   # notifications_ack_pending (0019)
        where += ["ack_required", "acked_at IS NULL"]
    if not include_expired:
        where.append(not_expired)
    params = {"user_id": user_id}
    if customer_id is not None:
        where.append("customer_id = %(customer_id)s")
        params["customer_id"] = customer_id
    elif customers is not None:
        where.append("(customer_id = ANY(%(customers)s::uuid[]) OR customer_id IS NULL)")
        params["customers"] = list(customers)
    if status == "read":
        where.append("read_at IS NOT NULL")
    elif status == "unread":
        where.append("read_at IS NULL")
    return " AND ".join(where), params


def list_inbox(conn, user_id, *, customer_id=None, customers=None, status="all", limit=50, offset=0,
               include_expired=False, ack=None):
    """One page of the inbox, newest first, with the filter's total and unread counts.

    One statement (one snapshot, one round trip, one executor start): on the partitioned history
    each scan in it starts on every partition, so the user's expired notifications are read once
    (`gone`, from the small notifications_expiring index) and left out of the page and both counts
    by their `seq` (an index column: the scans stay index-only), and the counts ride on the page
    (a row of their own when the page is empty). Two statements with a NOT IN subquery in each of
    their three scans cost about twice the PostgreSQL CPU at 13 partitions (docs/history.md).

    A first page reads its rows through the index in its order (notifications_inbox_covering, or
    the unread or per-customer one), newest partition first, stopping at the limit. A deeper
    page's `seq` values come from the index alone, the `offset` entries skipped there, and only
    the page's own rows are then read by `seq` (a second index probe each: 20 % more pages read
    than the first page's way, measured at 50 M). The counts are index-only scans (`_counts`). Reading the table instead
    costs a page read per notification in the inbox, thousands per request for a heavy user
    (docs/inbox.md, "The inbox at 10 M rows").
    """
    where, params = _scope(user_id, customer_id, customers, status, include_expired, ack,
                           not_expired="seq <> ALL((SELECT seqs FROM gone)::bigint[])")
    if offset == 0:   # the first page: its rows read straight through the index, in its order
        page = (f"page AS MATERIALIZED (SELECT {COLUMNS} FROM notifications WHERE {where} ORDER BY seq DESC"
                " LIMIT %(limit)s), seen AS MATERIALIZED (SELECT count(*) AS n,"
                " count(*) FILTER (WHERE read_at IS NULL) AS unread FROM page)")
        rows_of_page = "page n"
    else:             # deeper: the skipped entries read from the index alone, then the page's rows
        page = (f"page AS MATERIALIZED (SELECT seq FROM notifications WHERE {where}"
                " ORDER BY seq DESC LIMIT %(limit)s OFFSET %(offset)s)")
        rows_of_page = f"(page CROSS JOIN LATERAL (SELECT {COLUMNS} FROM notifications WHERE seq = page.seq) n)"
    with conn.cursor() as cur:   # plain rows made dicts here: half the cost of RealDictCursor's
        execute_prepared(cur, "WITH gone AS MATERIALIZED (SELECT coalesce(array_agg(seq), '{}') AS seqs"
                              "   FROM notifications WHERE user_id = %(user_id)s"
                              f"   AND expires_at IS NOT NULL AND expires_at <= now()), {page}"
                              f" SELECT c.total, c.unread, n.* FROM ({_counts(where, status, offset == 0)}) c"
                              f" LEFT JOIN {rows_of_page} ON true ORDER BY n.seq DESC",
                         dict(params, limit=limit, offset=offset) if offset else dict(params, limit=limit))
        names = [column.name for column in cur.description][2:]
        rows = cur.fetchall()
    items = [dict(zip(names, row[2:])) for row in rows if row[2] is not None]
    return items, rows[0][0], rows[0][1]


def _counts(where, status, first_page):
    """The filter's total and unread. Each count is a subquery of its own so that each is one
    index-only scan (total: an inbox index; unread: notifications_unread_counts); a single
    `count(*) FILTER (WHERE read_at IS NULL)` needs `read_at` of every row instead. A status
    filter is already in `where`.

    A first page shorter than its limit holds every notification of the filter, so its own
    counts (`seen`) are the filter's, in the same snapshot, and the scans are not run at all (an
    InitPlan runs when its value is first needed, here in the ELSE only). That is most users'
    inbox: the median user of the 50 M benchmark has 15 notifications, and the two scans read an
    index leaf in every partition, ~26 of a request's ~45 pages (docs/inbox.md)."""
    total = f"(SELECT count(*) FROM notifications WHERE {where})"
    unread = {"unread": None, "read": "0"}.get(status, f"(SELECT count(*) FROM notifications WHERE {where}"
                                                       " AND read_at IS NULL)")
    if first_page:
        source = " FROM seen s"
        total = f"CASE WHEN s.n < %(limit)s THEN s.n ELSE {total} END"
        if unread and unread != "0":
            unread = f"CASE WHEN s.n < %(limit)s THEN s.unread ELSE {unread} END"
    else:
        source = ""
    if unread is None:   # status=unread: the total is the unread count, counted once
        return f"SELECT n AS total, n AS unread FROM (SELECT {total}{source}) AS c (n)"
    return f"SELECT {total} AS total, {unread} AS unread{source}"


def visible(customers):
    """By-id lookups: a token limited to `customers` sees only those and customer-less
    notifications (as its inbox does); another customer's answers as missing. None: no limit."""
    if customers is None:
        return "", ()
    return " AND (customer_id IS NULL OR customer_id = ANY(%s::uuid[]))", (list(customers),)


def get(conn, user_id, notification_id, customers=None):
    """The user's notification, or None (also for another user's id)."""
    extra, args = visible(customers)
    with cursor(conn) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM notifications"
                    " WHERE id = %s AND user_id = %s AND deleted_at IS NULL AND in_app" + extra,
                    (notification_id, user_id, *args))
        return cur.fetchone()


def set_read(conn, user_id, notification_id, read, customers=None):
    """Mark read (keeping the first read time) or unread; the updated row or None."""
    extra, args = visible(customers)
    with cursor(conn) as cur:
        cur.execute(f"UPDATE notifications SET read_at = CASE WHEN %s THEN coalesce(read_at, now())"
                    f" ELSE NULL END WHERE id = %s AND user_id = %s AND deleted_at IS NULL AND in_app{extra}"
                    f" RETURNING {COLUMNS}", (read, notification_id, user_id, *args))
        return cur.fetchone()


def soft_delete(conn, user_id, notification_id, customers=None):
    """Hide it from inbox and stream; the row stays for audit. (customer_id,) when it existed
    (its event goes only to the streams that may see that customer), else None."""
    extra, args = visible(customers)
    with conn.cursor() as cur:
        cur.execute("UPDATE notifications SET deleted_at = now()"
                    " WHERE id = %s AND user_id = %s AND deleted_at IS NULL AND in_app" + extra
                    + " RETURNING customer_id", (notification_id, user_id, *args))
        return cur.fetchone()


def mark_all_read(conn, user_id, *, customer_id=None, customers=None, group=None, before=None):
    """Mark every unread notification in scope read (`before`: created at or before that
    time, to the millisecond shown in `created_at`); the (id, customer_id) of each it changed."""
    where, params = _scope(user_id, customer_id, customers, "unread")
    if group is not None:
        where += " AND type = %(group)s"
        params["group"] = group
    if before is not None:
        where += " AND created_at < date_trunc('milliseconds', %(before)s::timestamptz) + interval '1 millisecond'"
        params["before"] = before
    with conn.cursor() as cur:
        cur.execute(f"UPDATE notifications SET read_at = now() WHERE {where} RETURNING id, customer_id", params)
        return cur.fetchall()
