"""Providers report what became of the messages they accepted (reports.py says how each signs)."""
import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView

from ..api import Blueprint
from ..api.schema import StrictSchema, UtcDateTime
from ..errors import InvalidJson, InvalidRequest
from . import reports

blp = Blueprint("reports", __name__, url_prefix="/v1/providers",
                description="Delivery reports from providers (signed by the provider, no API key)")


class SignedReportSchema(StrictSchema):
    """The JSON report of a provider with a `report_secret`."""

    message_id = ma.fields.String(required=True, validate=ma.validate.Length(1, 256),
                                  metadata={"description": "the message id the provider answered when it accepted"})
    status = ma.fields.String(required=True, validate=ma.validate.OneOf(("delivered", "undelivered")))
    at = UtcDateTime(required=True, metadata={"description": "when it was delivered (or given up), RFC 3339"})
    reason = ma.fields.String(load_default=None, validate=ma.validate.Length(max=500))


class ReportAnswerSchema(ma.Schema):
    message = ma.fields.String()
    recorded = ma.fields.Integer(metadata={"description": "deliveries this report changed (0: unknown message id, "
                                                          "an intermediate status, or reported before)"})


FORM = {"type": "object", "required": ["MessageSid", "MessageStatus"],
        "properties": {"MessageSid": {"type": "string"}, "MessageStatus": {"type": "string"},
                       "ErrorCode": {"type": "string"}}}
ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


@blp.route("/<provider_name>/reports")
class Reports(MethodView):
    accepts_form = True   # Twilio posts form fields (app/api's require_json_body lets them through)

    @blp.doc(requestBody={"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": FORM},
        "application/json": {"schema": SignedReportSchema}}}, responses={
        "403": {"description": "`invalid_signature`: X-Twilio-Signature or X-Notifications-Signature does "
                               "not verify (or is older than five minutes)", "content": ERROR},
        "404": {"description": "`not_found`: no provider of this name reports delivery", "content": ERROR},
        "422": {"description": "`invalid_request`: a signed body without its required fields", "content": ERROR}})
    @blp.response(202, ReportAnswerSchema)
    def post(self, provider_name):
        """Record a provider's delivery report (delivered or undelivered)

        Authenticated by the provider's own signature, not an API key: a Twilio provider's status
        callback (form fields, `X-Twilio-Signature`) or, for a provider with a `report_secret`, JSON
        signed in `X-Notifications-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
        (docs/channels.md#delivery-reports). 202 also for an unknown message id, an intermediate
        status and a repeat: they change nothing, and a provider retries only what is not 2xx.
        """
        app = current_app._get_current_object()
        found = reports.reporter(app, provider_name)
        if found.kind == "twilio":
            reports.check_twilio(app, found, request)
            message_id, status, reason = reports.twilio_report(request.form)
            at = None
        else:
            reports.check_signed(found, request.headers.get(reports.SIGNATURE_HEADER), request.get_data())
            body = request.get_json(silent=True)
            if not isinstance(body, dict):
                raise InvalidJson("The report must be a JSON object")
            try:
                report = SignedReportSchema().load(body)
            except ma.ValidationError as error:
                raise InvalidRequest(errors=error.messages)
            message_id, status, reason, at = report["message_id"], report["status"], report["reason"], report["at"]
        if status is None:
            return {"message": "Intermediate status: ignored", "recorded": 0}
        recorded = reports.record(app, found, message_id, status, reason, at)
        return {"message": "Recorded" if recorded else "Unknown message or already reported: ignored",
                "recorded": recorded}
