"""SMS through Twilio's REST Messages API (or anything that speaks it).

Options: `account_sid`, `auth_token`, `from` (sender), `base_url` (defaults
to Twilio's; tests point it at a local server), `timeout`. Values written as
`${NAME}` are read from the environment so secrets stay out of the file.
"""
import os

import requests

from .base import Channel, RetryableError
from .templates import render
from .webhook import check_response

SMS_LIMIT = 1600   # Twilio's maximum body length


def _env(value):
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return os.environ.get(value[2:-1], "")
    return value


class TwilioChannel(Channel):
    needs = "phone"

    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.session = requests.Session()

    def send(self, outbound):
        sid = _env(self.options.get("account_sid", "${TWILIO_ACCOUNT_SID}"))
        token = _env(self.options.get("auth_token", "${TWILIO_AUTH_TOKEN}"))
        base = _env(self.options.get("base_url", "https://api.twilio.com")).rstrip("/")
        body = render(outbound.template.get("sms", "{title}: {content}"), outbound.notification)[:SMS_LIMIT]
        try:
            response = self.session.post(f"{base}/2010-04-01/Accounts/{sid}/Messages.json", auth=(sid, token),
                                         data={"To": outbound.contact["phone"],
                                               "From": _env(self.options.get("from", "${TWILIO_FROM}")),
                                               "Body": body},
                                         timeout=float(self.options.get("timeout", 10)))
        except requests.RequestException as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}"[:500])
        return check_response(response, id_field="sid")
