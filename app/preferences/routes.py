"""`GET`/`PUT /v1/notifications/preferences`: the effective preferences of the caller."""
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from ..security.auth import USER_SECURITY, current_user, user_required
from . import service
from .schemas import PreferencesQuerySchema, PreferencesSchema, PreferencesUpdateSchema

blp = Blueprint("preferences", __name__, url_prefix="/v1/notifications",
                description="What a user receives, where")


@blp.route("/preferences")
class Preferences(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(PreferencesQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
    @blp.response(200, PreferencesSchema)
    def get(self, customer_id):
        """The effective preferences (defaults merged with the user's choices)"""
        return service.preferences(current_user(), customer_id)

    @blp.doc(security=USER_SECURITY)
    @blp.arguments(PreferencesUpdateSchema)
    @blp.arguments(PreferencesQuerySchema, location="query", as_kwargs=True, unknown=RAISE)
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
