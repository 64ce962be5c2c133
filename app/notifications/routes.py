"""The inbox endpoints. Views validate, call one repository function, serialise."""
import uuid

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from .. import db
from ..auth import USER_SECURITY, current_user, user_required
from ..errors import (FailedToDelete, FailedToFetchNotifications, FailedToMarkAsRead, InvalidId,
                      NotFound)
from . import repository
from .model import to_public
from .schemas import InboxQuerySchema, InboxSchema, NotificationSchema, ReadPatchSchema

blp = Blueprint("notifications", __name__, url_prefix="/v1/notifications",
                description="A user's inbox of stored notifications")


def parse_id(raw):
    """A path id as UUID, or 400 invalid_id."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidId()


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
            row = repository.get(db.get_conn(), current_user().id, parse_id(notification_id))
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
            if not repository.soft_delete(conn, user.id, nid):
                raise NotFound()
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
        with db.failing_as(FailedToMarkAsRead), db.transaction(conn):
            row = repository.set_read(conn, user.id, nid, body.get("read", True))
            if row is None:
                raise NotFound()
        return to_public(row)
