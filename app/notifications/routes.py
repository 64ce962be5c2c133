"""The inbox endpoints. Views validate, call one function of service.py, serialise."""
from ..api import Blueprint, shaped_response
from ..api.schema import CustomerQuerySchema, parse_id
from ..security.auth import UserView, current_user
from . import service
from .model import to_public
from .schemas import (InboxQuerySchema, InboxSchema, NotificationSchema, ReadAllResultSchema, ReadAllSchema,
                      ReadPatchSchema, UnreadCountSchema)

blp = Blueprint("notifications", __name__, description="A user's inbox of stored notifications")


@blp.route("")
class Inbox(UserView):
    @blp.query(InboxQuerySchema)
    @blp.response(200, InboxSchema)
    def get(self, limit, offset, status, customer_id, include_expired, ack):
        """List the inbox, newest first (notifications past their `expires_at` only with `include_expired`;
        `ack=pending`: the notices still awaiting acknowledgement)"""
        items, total, unread = service.inbox(current_user(), customer_id, status, limit, offset, include_expired,
                                             ack)
        return shaped_response({"items": [to_public(row) for row in items], "total": total, "unread": unread,
                                "limit": limit, "offset": offset})


@blp.route("/<notification_id>")
class NotificationById(UserView):
    @blp.response(200, NotificationSchema)
    def get(self, notification_id):
        """Get one notification"""
        return to_public(service.notification(current_user(), parse_id(notification_id)))

    @blp.response(204)
    def delete(self, notification_id):
        """Remove from the inbox and stream (kept for audit)"""
        service.delete(current_user(), parse_id(notification_id))


@blp.route("/<notification_id>/read")
class NotificationRead(UserView):
    @blp.arguments(ReadPatchSchema, required=False)
    @blp.response(200, NotificationSchema)
    def patch(self, body, notification_id):
        """Mark read (empty body) or unread (`{"read": false}`)"""
        return to_public(service.set_read(current_user(), parse_id(notification_id), body.get("read", True)))


@blp.route("/read-all")
class ReadAll(UserView):
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
class UnreadCount(UserView):
    @blp.query(CustomerQuerySchema)
    @blp.response(200, UnreadCountSchema)
    def get(self, customer_id):
        """Unread notifications: in total, per customer (`none`: of no customer) and per group"""
        return service.unread(current_user(), customer_id)
