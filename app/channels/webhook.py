"""A generic HTTP webhook channel: POST a JSON body built from a template.

Options (notifications.yaml): `url`, `headers` (e.g. an Authorization
header), `body` (a mapping whose string values, at any depth, are templates
over the notification plus `recipient`, `user_id` and `delivery_id`),
`needs` (contact field used as the recipient, if any: `phone` makes this a
generic SMS-gateway adapter), `max_length` (longest rendered string value,
e.g. 160 for an SMS gateway), `timeout` seconds. Any option value written
whole as `${NAME}` is read from the environment, so secrets stay out of the
file. Every request carries `Idempotency-Key: <delivery id>`.

A 2xx answer is success (its JSON `id`, if any, is the provider id);
429 and 5xx, timeouts and connection errors are retried; any other 4xx, or
a redirect, is a permanent refusal recorded with the provider's reason.
"""
import requests

from .base import Channel, PermanentError, RetryableError, expand_env, http_kind
from .templates import render


def render_tree(template, values, max_length=None):
    """Render every string of a JSON-like template; other values pass through."""
    if isinstance(template, str):
        text = render(template, values)
        return text[:max_length] if max_length else text
    if isinstance(template, dict):
        return {key: render_tree(value, values, max_length) for key, value in template.items()}
    if isinstance(template, list):
        return [render_tree(value, values, max_length) for value in template]
    return template


class WebhookChannel(Channel):
    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.needs = options.get("needs")
        self.session = requests.Session()

    def _body(self, outbound):
        values = dict(outbound.values(), recipient=self.address(outbound.contact) or "",
                      user_id=outbound.user_id, delivery_id=outbound.delivery_id)
        template = self.options.get("body") or {"recipient": "{recipient}", "title": "{title}",
                                                "content": "{content}", "id": "{id}"}
        return render_tree(template, values, self.options.get("max_length"))

    def send(self, outbound):
        headers = {str(k): str(expand_env(v)) for k, v in (self.options.get("headers") or {}).items()}
        headers["Idempotency-Key"] = outbound.delivery_id
        try:
            response = self.session.post(expand_env(self.options["url"]), json=self._body(outbound),
                                         headers=headers, allow_redirects=False,
                                         timeout=float(self.options.get("timeout", 10)))
        except requests.RequestException as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}"[:500])
        provider_id = check_response(response)
        outbound.accepted(provider_id)
        return provider_id


def provider_reason(response):
    """The provider's own words for a refusal: its JSON `message`/`error` (and `code`), else the text."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        message = data.get("message") or data.get("error_message") or data.get("error") or data.get("detail")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            code = data.get("code") or data.get("error_code")
            return f"{message} (code {code})" if code else str(message)
    return " ".join(response.text.split())[:300] or response.reason or ""


def check_response(response, id_field="id"):
    """Map a provider's HTTP answer to a message id or the right failure class."""
    status = response.status_code
    if status in (408, 425, 429) or status >= 500:
        raise RetryableError(f"provider answered {status}: {provider_reason(response)}"[:1000], http_kind(status),
                             status)
    if status >= 300:
        raise PermanentError(f"provider refused ({status}): {provider_reason(response)}"[:1000], http_kind(status),
                             status)
    try:
        data = response.json()
    except ValueError:
        return None
    return (str(data.get(id_field) or "") or None) if isinstance(data, dict) else None
