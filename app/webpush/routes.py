"""Web Push subscription endpoints (bearer token): a browser registers where its push service
takes this user's notifications, and takes it back. 503 `webpush_not_configured` while the
service has no VAPID keys, so a client can tell "off here" from "broken"."""
from flask import current_app

from .. import audit, db
from ..api import Blueprint
from ..api.schema import parse_id
from ..errors import NotFound, TooManySubscriptions, WebPushNotConfigured
from ..notifications.model import rfc3339
from ..security.auth import UserView, current_user
from . import repository
from .schemas import PublicKeySchema, SubscriptionOutSchema, SubscriptionSchema

blp = Blueprint("webpush", __name__, description="Web Push subscriptions of the caller's browsers")


def _configured():
    if not current_app.config.get("VAPID_PUBLIC_KEY"):
        raise WebPushNotConfigured()


def public(row):
    return {"id": str(row["id"]), "endpoint": row["endpoint"], "keys": {"p256dh": row["p256dh"], "auth": row["auth"]},
            "expirationTime": rfc3339(row["expires_at"]), "created_at": rfc3339(row["created_at"])}


@blp.route("/webpush/key")
class Key(UserView):
    @blp.response(200, PublicKeySchema)
    def get(self):
        """The VAPID public key to subscribe with (`applicationServerKey`)"""
        _configured()
        return {"public_key": current_app.config["VAPID_PUBLIC_KEY"]}


@blp.route("/webpush/subscriptions")
class Subscriptions(UserView):
    @blp.response(200, SubscriptionOutSchema(many=True))
    def get(self):
        """The caller's subscriptions, oldest first"""
        _configured()
        return [public(row) for row in repository.for_user(db.get_conn(), current_user().id)]

    @blp.arguments(SubscriptionSchema)
    @blp.response(201, SubscriptionOutSchema)
    def post(self, body):
        """Store the browser's subscription (the same endpoint again replaces it); at most 10 a user (409)"""
        _configured()
        user = current_user()
        conn = db.get_conn()
        with db.transaction(conn):
            row = repository.save(conn, user.id, body)
            if row is None:
                raise TooManySubscriptions()
            # no endpoint or key in the audit: they identify a device
            audit.record(conn, "webpush.subscribe", ("user", user.id), {"subscription": str(row["id"])})
        return public(row)


@blp.route("/webpush/subscriptions/<subscription_id>")
class Subscription(UserView):
    @blp.response(204)
    def delete(self, subscription_id):
        """Forget one of the caller's subscriptions (another user's id answers 404, as a missing one)"""
        _configured()
        sid = parse_id(subscription_id, "Invalid subscription ID")
        user = current_user()
        conn = db.get_conn()
        with db.transaction(conn):
            if not repository.delete(conn, user.id, sid):
                raise NotFound("Subscription not found")
            audit.record(conn, "webpush.unsubscribe", ("user", user.id), {"subscription": str(sid)})
        return None
