"""The inbox endpoints. Views validate, call one repository function, serialise."""
from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from .. import audit, db
from ..api.schema import parse_id
from ..errors import FailedToDelete, FailedToFetchNotifications, FailedToMarkAsRead, NotFound
from ..security.auth import USER_SECURITY, current_user, user_required
from . import events
from . import repository
from .model import rfc3339, to_public
from .schemas import (InboxQuerySchema, InboxSchema, NotificationSchema, ReadAllResultSchema, ReadAllSchema,
                      ReadPatchSchema, UnreadCountSchema, UnreadQuerySchema)

blp = Blueprint("notifications", __name__, url_prefix="/v1/notifications",
                description="A user's inbox of stored notifications")


@blp.route("")
class Inbox(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    # webargs drops unknown query parameters by default; a misspelt filter must be a 422
    @blp.arguments(InboxQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, InboxSchema)
    def get(self, limit, offset, status, customer_id):
        """List the inbox, newest first"""
        user = current_user()
        user.check_customer(customer_id)
        with db.failing_as(FailedToFetchNotifications):
            items, total, unread = repository.list_inbox(
                db.get_conn(), user.id, customer_id=customer_id, customers=user.visible_customers(),
                status=status, limit=limit, offset=offset)
        return {"items": [to_public(row) for row in items], "total": total, "unread": unread,
                "limit": limit, "offset": offset}


@blp.route("/<notification_id>")
class NotificationById(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.response(200, NotificationSchema)
    def get(self, notification_id):
        """Get one notification"""
        with db.failing_as(FailedToFetchNotifications):
            user = current_user()
            row = repository.get(db.get_conn(), user.id, parse_id(notification_id), user.visible_customers())
        if row is None:
            raise NotFound()
        return to_public(row)

    @blp.doc(security=USER_SECURITY)
    @blp.response(204)
    def delete(self, notification_id):
        """Remove from the inbox and stream (kept for audit)"""
        user, nid = current_user(), parse_id(notification_id)
        conn = db.get_conn()
        with db.failing_as(FailedToDelete), db.transaction(conn):
            deleted = repository.soft_delete(conn, user.id, nid, user.visible_customers())
            if deleted is None:
                raise NotFound()
            audit.record(conn, "notification.delete", ("notification", nid), {"deleted": True})
        events.after_change(current_app, conn, user.id, events.about("deleted", deleted[0], {"ids": [str(nid)]}))
        return None


@blp.route("/<notification_id>/read")
class NotificationRead(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(ReadPatchSchema, required=False)
    @blp.response(200, NotificationSchema)
    def patch(self, body, notification_id):
        """Mark read (empty body) or unread (`{"read": false}`)"""
        user, nid = current_user(), parse_id(notification_id)
        conn = db.get_conn()
        read = body.get("read", True)
        with db.failing_as(FailedToMarkAsRead), db.transaction(conn):
            row = repository.set_read(conn, user.id, nid, read, user.visible_customers())
            if row is None:
                raise NotFound()
            audit.record(conn, "notification.read" if read else "notification.unread", ("notification", nid),
                         {"read": read})
        events.after_change(current_app, conn, user.id,
                            events.about("read", row["customer_id"], {"ids": [str(nid)], "read": read}))
        return to_public(row)


@blp.route("/read-all")
class ReadAll(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(ReadAllSchema, required=False)
    @blp.response(200, ReadAllResultSchema)
    def post(self, body):
        """Mark every unread notification read, optionally for one customer, group, or up to a time

        Every device of the user receives `read` (`{"all": true, ..., "ids": [...]}`, listing only
        what that stream may see) and `unread` events.
        """
        user = current_user()
        customer_id, before = body.get("customer_id"), body.get("before")
        user.check_customer(customer_id)
        group = None
        if body.get("group") is not None:
            group = current_app.config["DOMAIN"].known_group(body["group"]).name
        conn = db.get_conn()
        with db.failing_as(FailedToMarkAsRead), db.transaction(conn):
            changed = repository.mark_all_read(conn, user.id, customer_id=customer_id,
                                               customers=user.visible_customers(), group=group, before=before)
            audit.record(conn, "notification.read_all", ("user", user.id),
                         {"read": True, "customer_id": customer_id, "group": group, "before": before,
                          "updated": len(changed)})
        if changed:
            events.after_change(current_app, conn, user.id,
                                *events.read_all(changed, customer_id, group, rfc3339(before)))
        return {"updated": len(changed)}


@blp.route("/unread-count")
class UnreadCount(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(UnreadQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, UnreadCountSchema)
    def get(self, customer_id):
        """Unread notifications: in total, per customer (`none`: of no customer) and per group"""
        user = current_user()
        user.check_customer(customer_id)
        with db.failing_as(FailedToFetchNotifications):
            return events.unread_counts(db.get_conn(), user.id, current_app.config["DOMAIN"],
                                        customer_id=customer_id, customers=user.visible_customers())
