"""The inbox endpoints. Views validate, call one function of service.py, serialise."""
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from ..api.schema import parse_id
from ..security.auth import USER_SECURITY, current_user, user_required
from . import service
from .model import to_public
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
        items, total, unread = service.inbox(current_user(), customer_id, status, limit, offset)
        return {"items": [to_public(row) for row in items], "total": total, "unread": unread,
                "limit": limit, "offset": offset}


@blp.route("/<notification_id>")
class NotificationById(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.response(200, NotificationSchema)
    def get(self, notification_id):
        """Get one notification"""
        return to_public(service.notification(current_user(), parse_id(notification_id)))

    @blp.doc(security=USER_SECURITY)
    @blp.response(204)
    def delete(self, notification_id):
        """Remove from the inbox and stream (kept for audit)"""
        service.delete(current_user(), parse_id(notification_id))


@blp.route("/<notification_id>/read")
class NotificationRead(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(ReadPatchSchema, required=False)
    @blp.response(200, NotificationSchema)
    def patch(self, body, notification_id):
        """Mark read (empty body) or unread (`{"read": false}`)"""
        return to_public(service.set_read(current_user(), parse_id(notification_id), body.get("read", True)))


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
        return {"updated": service.read_all(current_user(), body.get("customer_id"), body.get("group"),
                                            body.get("before"))}


@blp.route("/unread-count")
class UnreadCount(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(UnreadQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, UnreadCountSchema)
    def get(self, customer_id):
        """Unread notifications: in total, per customer (`none`: of no customer) and per group"""
        return service.unread(current_user(), customer_id)
