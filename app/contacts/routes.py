"""Contacts endpoints (API key): services set and read where a user is reached."""
from flask import current_app
from flask.views import MethodView

from .. import audit, consent, db
from ..api import PREFIX, Blueprint
from ..api.schema import parse_id
from ..errors import FailedToFetchContact, FailedToUpdateContact, NotFound
from ..notifications.model import rfc3339
from ..security.auth import service_required
from . import repository
from .schemas import ContactOutSchema, ContactSchema

blp = Blueprint("contacts", __name__, url_prefix=PREFIX + "/users",
                description="Where users are reached outside the app (API key)")


def _public(row):
    return {"user_id": str(row["user_id"]), "email": row["email"], "phone": row["phone"],
            "locale": row["locale"], "timezone": row["timezone"], "updated_at": rfc3339(row["updated_at"])}


@blp.route("/<user_id>/contact")
class Contact(MethodView):
    decorators = [service_required("contacts")]

    @blp.response(200, ContactOutSchema)
    def get(self, user_id):
        """The user's email, phone, locale and time zone"""
        uid = parse_id(user_id, "Invalid user ID")
        with db.failing_as(FailedToFetchContact):
            row = repository.get(db.get_conn(), uid)
        if row is None:
            raise NotFound("Contact not found")
        return _public(row)

    @blp.arguments(ContactSchema)
    @blp.response(200, ContactOutSchema)
    def put(self, body, user_id):
        """Create or replace the user's contact (a field left out is cleared)"""
        uid = parse_id(user_id, "Invalid user ID")
        conn = db.get_conn()
        with db.failing_as(FailedToUpdateContact), db.transaction(conn):
            consent.lock(conn, uid)
            old = repository.get(conn, uid)
            row = repository.upsert(conn, uid, body)
            consent.append(conn, uid, consent.contact_records(consent.channel_needs(current_app), old, row),
                           body.get("consent_text_version"))
            # field names only: the audit log is immutable, so it must hold no address to erase later
            audit.record(conn, "contact.update", ("user", uid),
                         {"set": sorted(f for f in repository.FIELDS if body.get(f) is not None),
                          "cleared": sorted(f for f in repository.FIELDS if body.get(f) is None)})
        return _public(row)

    @blp.response(204)
    def delete(self, user_id):
        """Forget the user's contact (no more email or SMS)"""
        uid = parse_id(user_id, "Invalid user ID")
        conn = db.get_conn()
        with db.failing_as(FailedToUpdateContact), db.transaction(conn):
            consent.lock(conn, uid)
            old = repository.get(conn, uid)
            if not repository.delete(conn, uid):
                raise NotFound("Contact not found")
            consent.append(conn, uid, consent.contact_records(consent.channel_needs(current_app), old, None))
            audit.record(conn, "contact.delete", ("user", uid), {"deleted": True})
        return None
