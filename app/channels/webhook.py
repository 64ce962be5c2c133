"""A generic HTTP webhook channel: POST a JSON body built from a template.

Options (notifications.yaml): `url`, `headers` (e.g. an Authorization
header), `body` (a mapping whose string values are templates over the
notification and recipient), `needs` (contact field used as the recipient, if
any), `timeout` seconds. It also serves as the generic SMS-gateway adapter.
"""
import requests

from .base import Channel, PermanentError, RetryableError
from .templates import render


class WebhookChannel(Channel):
    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.needs = options.get("needs")
        self.session = requests.Session()

    def _body(self, outbound):
        values = dict(outbound.notification, recipient=self.address(outbound.contact) or "",
                      user_id=outbound.user_id, delivery_id=outbound.delivery_id)
        template = self.options.get("body") or {"recipient": "{recipient}", "title": "{title}",
                                                "content": "{content}", "id": "{id}"}
        return {key: render(value, values) if isinstance(value, str) else value
                for key, value in template.items()}

    def send(self, outbound):
        try:
            response = self.session.post(self.options["url"], json=self._body(outbound),
                                         headers=dict(self.options.get("headers") or {},
                                                      **{"Idempotency-Key": outbound.delivery_id}),
                                         timeout=float(self.options.get("timeout", 10)))
        except requests.RequestException as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}"[:500])
        return check_response(response)


def check_response(response, id_field="id"):
    """Map a provider's HTTP answer to a message id or the right failure class."""
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableError(f"provider answered {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400:
        raise PermanentError(f"provider refused ({response.status_code}): {response.text[:300]}")
    try:
        return str(response.json().get(id_field) or "") or None
    except ValueError:
        return None
