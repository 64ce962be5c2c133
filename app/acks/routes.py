"""The user acknowledges a notice (a deliberate act; reading acknowledges nothing)."""
from ..api import Blueprint
from ..api.schema import parse_id
from ..notifications.model import to_public
from ..notifications.schemas import NotificationSchema
from ..security.auth import UserView, current_user
from . import service

blp = Blueprint("acks", __name__, description="Acknowledging notices that require it")


@blp.route("/<notification_id>/ack")
class Acknowledge(UserView):
    @blp.response(200, NotificationSchema)
    def post(self, notification_id):
        """Acknowledge a notice: records the time, client and user agent (audited), marks it read

        Idempotent: a repeat answers 200 with the first `acked_at`. Pending escalation steps are
        cancelled; every stream of the user gets `event: ack`. 409 `ack_not_required` for a
        notification that needs no acknowledgement.
        """
        return to_public(service.acknowledge(current_user(), parse_id(notification_id)))
