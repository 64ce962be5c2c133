"""SMS through Twilio's REST Messages API (or anything that speaks it).

POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json, form fields
To, From (or MessagingServiceSid) and Body, HTTP basic auth
account_sid:auth_token; a 201 answer carries the message's `sid`.

Options: `account_sid`, `auth_token`, `from` (sender number) or
`messaging_service_sid`, `base_url` (defaults to Twilio's; tests point it
at a local server), `status_callback` (URL Twilio reports delivery status
to; by default `{PUBLIC_URL}/v1/providers/{name}/reports` when PUBLIC_URL is
set, app/deliveries/reports.py), `timeout`. Values written as `${NAME}` are read from the environment
so secrets stay out of the file; by default they come from
TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM.

The body is cut to `SMS_MAX_SEGMENTS` segments (default 2; app/channels/
sms_segments.py counts GSM-7 and UCS-2 segments and picks an ellipsis that
keeps a GSM-7 body GSM-7): a long notification costs at most that many
messages, never Twilio's 1,600 characters (up to 24 UCS-2 segments).

Twilio's answers map as every provider's: 429/5xx, timeouts and connection
errors are retried; a 4xx is permanent, recorded with Twilio's own message
and error code (e.g. 21211 "The 'To' number is not a valid phone number").
"""
import requests

from .base import Channel, RetryableError, expand_env, report_url
from .sms_segments import fit
from .templates import render
from .webhook import check_response


class TwilioChannel(Channel):
    needs = "phone"

    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.session = requests.Session()

    def _option(self, key, default=None):
        return expand_env(self.options.get(key, default)) or ""

    def send(self, outbound):
        sid = self._option("account_sid", "${TWILIO_ACCOUNT_SID}")
        token = self._option("auth_token", "${TWILIO_AUTH_TOKEN}")
        sender = self._option("from", "${TWILIO_FROM}")
        service = self._option("messaging_service_sid")
        if not (sid and token and (sender or service)):
            # a configuration gap, not this message's fault: retried, so fixing the setting saves it
            raise RetryableError(f"channel {self.name!r} is not configured: account_sid, auth_token and "
                                 "from (or messaging_service_sid) are required", "not_configured")
        base = self._option("base_url", "https://api.twilio.com").rstrip("/")
        text = render(outbound.template.get("sms", "{title}: {content}"), outbound.values())
        body = fit(text.replace("\t", " "), self.app.config["SMS_MAX_SEGMENTS"])   # a tab is not GSM-7
        form = {"To": outbound.contact["phone"], "Body": body}
        if service:
            form["MessagingServiceSid"] = service
        else:
            form["From"] = sender
        callback = self._option("status_callback") or report_url(self.app, self.name)
        if callback:
            form["StatusCallback"] = callback
        try:
            response = self.session.post(f"{base}/2010-04-01/Accounts/{sid}/Messages.json", auth=(sid, token),
                                         data=form, allow_redirects=False,
                                         timeout=float(self.options.get("timeout", 10)))
        except requests.RequestException as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}"[:500])
        sid = check_response(response, id_field="sid")
        outbound.accepted(sid)
        return sid
