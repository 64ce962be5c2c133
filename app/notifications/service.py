"""What the inbox endpoints do, one function each.

The views validate and serialise; these check the caller's customers, read or
change the rows (a change in one transaction with its audit row), and, once a
change has committed, tell every device of the user (events.py).
"""
from flask import current_app

from .. import audit, db
from ..errors import FailedToDelete, FailedToFetchNotifications, FailedToMarkAsRead, NotFound
from . import events, repository
from .model import rfc3339


def inbox(user, customer_id, status, limit, offset, include_expired=False, ack=None):
    """(rows, total, unread) of one page of the user's inbox, newest first."""
    user.check_customer(customer_id)
    with db.reading(FailedToFetchNotifications) as conn:
        return repository.list_inbox(conn, user.id, customer_id=customer_id, customers=user.visible_customers(),
                                     status=status, limit=limit, offset=offset, include_expired=include_expired,
                                     ack=ack)


def unread(user, customer_id):
    """The user's unread counts: in total, per customer and per group."""
    user.check_customer(customer_id)
    with db.reading(FailedToFetchNotifications) as conn:
        return events.unread_counts(conn, user.id, current_app.config["DOMAIN"], customer_id=customer_id,
                                    customers=user.visible_customers())


def notification(user, notification_id):
    """One of the user's notifications, or 404."""
    with db.reading(FailedToFetchNotifications) as conn:
        row = repository.get(conn, user.id, notification_id, user.visible_customers())
    if row is None:
        raise NotFound()
    return row


def delete(user, notification_id):
    """Take a notification out of the inbox and the streams; the row stays, for the audit log."""
    with db.writing(FailedToDelete) as conn:
        deleted = repository.soft_delete(conn, user.id, notification_id, user.visible_customers())
        if deleted is None:
            raise NotFound()
        audit.record(conn, "notification.delete", ("notification", notification_id), {"deleted": True})
    events.after_change(current_app, conn, user.id,
                        events.about("deleted", deleted[0], {"ids": [str(notification_id)]}))


def set_read(user, notification_id, read):
    """Mark one notification read or unread; returns its row."""
    with db.writing(FailedToMarkAsRead) as conn:
        row = repository.set_read(conn, user.id, notification_id, read, user.visible_customers())
        if row is None:
            raise NotFound()
        audit.record(conn, "notification.read" if read else "notification.unread", ("notification", notification_id),
                     {"read": read})
    events.after_change(current_app, conn, user.id,
                        events.about("read", row["customer_id"], {"ids": [str(notification_id)], "read": read}))
    return row


def read_all(user, customer_id, group, before):
    """Mark every unread notification read, narrowed by customer, group (or alias) and time; returns
    how many changed."""
    user.check_customer(customer_id)
    if group is not None:
        group = current_app.config["DOMAIN"].known_group(group).name
    with db.writing(FailedToMarkAsRead) as conn:
        changed = repository.mark_all_read(conn, user.id, customer_id=customer_id,
                                           customers=user.visible_customers(), group=group, before=before)
        audit.record(conn, "notification.read_all", ("user", user.id),
                     {"read": True, "customer_id": customer_id, "group": group, "before": before,
                      "updated": len(changed)})
    if changed:
        events.after_change(current_app, conn, user.id, *events.read_all(changed, customer_id, group, rfc3339(before)))
    return len(changed)
