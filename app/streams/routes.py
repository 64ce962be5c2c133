"""`GET /v1/notifications/sse` (the stream) and `POST /v1/notifications/sse/ticket`."""
import functools
import time

import jwt
from flask import Response, current_app, g, request
from flask.views import MethodView
from flask_smorest import Blueprint
import marshmallow as ma

from .. import ratelimit
from ..bus import redis
from ..errors import InvalidRequest, InvalidTicket, InvalidUserId
from ..security.auth import USER_SECURITY, bearer_token, current_user, decode_token, user_required
from . import access, frames, handoff
from .keeper import keeper, new_peer

blp = Blueprint("streams", __name__, url_prefix="/v1/notifications",
                description="The real-time stream (Server-Sent Events)")


class StreamQuerySchema(ma.Schema):
    class Meta:
        unknown = ma.RAISE

    ticket = ma.fields.String(load_default=None, metadata={"description": "from POST /sse/ticket, for EventSource"})
    customer_id = ma.fields.UUID(load_default=None)
    last_event_id = ma.fields.Integer(load_default=None, validate=ma.validate.Range(min=0),
                                      metadata={"description": "cursor, when Last-Event-ID cannot be sent"})


class TicketSchema(ma.Schema):
    ticket = ma.fields.String()
    expires_in = ma.fields.Integer()
    stream_url = ma.fields.String()


def _cursor(query_value):
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw == "":
        return query_value
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(errors={"Last-Event-ID": ["Must be a cursor received as `id:`."]})
    if value < 0:
        raise InvalidRequest(errors={"Last-Event-ID": ["Must be a cursor received as `id:`."]})
    return value


def _caller(ticket, consume=True):
    """(the user, when their credentials expire): from the bearer token, else from the ticket,
    which a GET uses up and a HEAD only checks."""
    if ticket is not None and bearer_token() is None:
        found = (access.redeem_ticket if consume else access.peek_ticket)(redis(), ticket)
        return found.user, found.expires_at
    token = bearer_token()
    user = current_user() if ticket is None else decode_token(token, current_app.config)
    return user, _expiry(token)


def _expiry(token):
    """The `exp` of a bearer token that was just verified."""
    return float(jwt.decode(token, options={"verify_signature": False})["exp"])


@blp.route("/sse")
class StreamView(MethodView):
    @blp.doc(security=USER_SECURITY, responses={"200": {
        "description": "text/event-stream; each notification is `id: <cursor>` + `data: <JSON>`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
    @blp.arguments(StreamQuerySchema, location="query", as_kwargs=True)
    def get(self, ticket, customer_id, last_event_id):
        """Open the real-time stream

        Authenticate with the bearer token, or with `?ticket=` from
        `POST /v1/notifications/sse/ticket` (EventSource cannot send headers).
        Reconnect with `Last-Event-ID` (or `?last_event_id=`) to receive every
        missed notification in order, then the live stream.
        """
        user, expires_at = _caller(ticket, consume=request.method != "HEAD")
        if expires_at <= time.time():   # within the tokens' clock leeway: it would end at once
            raise InvalidUserId() if ticket is None else InvalidTicket()
        user.check_customer(customer_id)
        cursor = _cursor(last_event_id)
        config = current_app.config
        if customer_id is not None:
            customers = {str(customer_id)}
        elif user.customers is not None:
            customers = {str(c) for c in user.customers} | {""}
        else:
            customers = None
        if request.method == "HEAD":   # the headers a GET would get, and no stream
            return Response(b"", mimetype="text/event-stream", headers=handoff.HEADERS)
        the_keeper = keeper(current_app)
        stream = the_keeper.open(user.id, customers, new_peer(request.environ, g.get("request_id")), expires_at,
                                 admit=functools.partial(ratelimit.admit_stream, user.id))
        try:
            frames_ = [frames.opening(config["SSE_RETRY_MS"])] + the_keeper.first_frames(stream, cursor)
        except BaseException:
            stream.close("failed to open")
            raise
        return handoff.response(request.environ, the_keeper, stream, frames_)


@blp.route("/sse/ticket")
class TicketView(MethodView):
    decorators = [user_required]

    @blp.doc(security=USER_SECURITY)
    @blp.response(201, TicketSchema)
    def post(self):
        """Trade the bearer token for a single-use stream ticket (about a minute)"""
        ttl = current_app.config["SSE_TICKET_TTL_SECONDS"]
        user = current_user()
        # A stream the ticket could not open is refused here, where a browser can read the 429
        # and its Retry-After (EventSource sees neither).
        access.slots(current_app).check_room(user.id)
        ratelimit.check_stream_admission(user.id)
        ticket = access.issue_ticket(redis(), user, ttl, _expiry(bearer_token()))
        return {"ticket": ticket, "expires_in": ttl, "stream_url": f"/v1/notifications/sse?ticket={ticket}"}
