"""`GET`/`PUT /v1/notifications/preferences`: the effective preferences of the caller."""
from ..api import Blueprint
from ..api.schema import CustomerQuerySchema
from ..security.auth import UserView, current_user
from . import service
from .schemas import PreferencesSchema, PreferencesUpdateSchema

blp = Blueprint("preferences", __name__, description="What a user receives, where")


@blp.route("/preferences")
class Preferences(UserView):
    @blp.arguments(PreferencesUpdateSchema)
    @blp.query(CustomerQuerySchema)
    @blp.response(200, PreferencesSchema)
    def put(self, body, customer_id):
        """Apply a list of changes at once (all or none); returns the effective preferences

        Each change names a `group` and optionally an `event`, a `channel` and a
        `customer_id` (omitted: for all customers), with `enabled`. Locked events
        cannot be switched off (400 `notifications_m.event_locked`). With a token
        limited by `customers`, "all customers" means each listed customer, and
        `quiet_hours` (which hold for every customer) are 403
        `notifications_m.invalid_customer_id`.
        """
        return service.update(current_user(), body, customer_id)

    @blp.query(CustomerQuerySchema)
    @blp.response(200, PreferencesSchema)
    def get(self, customer_id):
        """The effective preferences (defaults merged with the user's choices)"""
        return service.preferences(current_user(), customer_id)
