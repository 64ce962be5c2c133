"""A user reads back what happened to each channel of their notification."""
from .. import db
from ..api import Blueprint
from ..api.schema import parse_id
from ..dispatch.schemas import DeliveriesSchema
from ..errors import FailedToFetchNotifications, NotFound
from ..notifications.model import rfc3339
from ..security.auth import UserView, current_user
from . import repository

blp = Blueprint("deliveries", __name__, description="Delivery status per channel")


def _public(delivery):
    times = ("created_at", "updated_at", "sent_at", "delivered_at")
    history = [{"attempt": a["attempt"], "outcome": a["outcome"], "error": a["error"],
                "provider": a["provider"], "provider_message_id": a["provider_message_id"], "started_at": rfc3339(a["started_at"]),
                "finished_at": rfc3339(a["finished_at"])} for a in delivery["history"]]
    return dict({k: delivery[k] for k in ("channel", "status", "reason", "attempts", "last_error",
                                          "provider_message_id")},
                **{k: rfc3339(delivery[k]) for k in times}, history=history)


@blp.route("/<notification_id>/deliveries")
class Deliveries(UserView):
    @blp.response(200, DeliveriesSchema)
    def get(self, notification_id):
        """Each channel's status, attempts and last error"""
        with db.failing_as(FailedToFetchNotifications):
            user = current_user()
            rows = repository.for_notification(db.get_conn(), user.id, parse_id(notification_id),
                                               user.visible_customers())
        if rows is None:
            raise NotFound()
        return {"items": [_public(r) for r in rows]}
