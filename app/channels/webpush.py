"""Web Push channel (`type: webpush`): the notification to every browser the user subscribed.

The payload is the notification's public JSON (as the inbox shows it), encrypted for each
subscription (aes128gcm, RFC 8291) and signed with the service's VAPID key (RFC 8292) by
pywebpush; content is shortened so the encrypted record stays within the 4 KB push services take.
The push service is reached only at public addresses (app/webpush/transport.py).

Per subscription: 201/202 accepted; 404/410 the subscription is gone and deleted; 429/5xx and
connection errors retryable; any other 4xx refused. The delivery is sent once any of the user's
subscriptions accepted it (the others are not tried again: a retry would send a second copy to
the ones that took it); retried when none accepted and one may yet; failed when every one refused
or is gone. A user with no subscription is skipped, like a user without an email address.

Options: `ttl` (seconds a push service keeps an undelivered message, default 86400), `timeout`.
"""
import json
import logging

import requests
from flask import current_app
from pywebpush import WebPusher
from py_vapid import Vapid

from .. import audit, db
from ..webpush import repository, transport
from ..webpush.keys import b64url_decode
from .base import Channel, PermanentError, RetryableError, http_kind

log = logging.getLogger(__name__)
MAX_PAYLOAD = 3000     # bytes of JSON before encryption; push services take 4096 after it


def payload(notification, template):
    """The JSON a service worker shows: the public shape, or the teaser alone for a teaser event."""
    teaser = template.get("teaser")
    if teaser:
        from .templates import render
        body = {"id": notification["id"], "title": render(teaser, notification), "content": "",
                "teaser": True, "link_url": notification.get("link_url"), "type": notification.get("type"),
                "event": notification.get("event"), "created_at": notification.get("created_at")}
    else:
        body = dict(notification)
    data = json.dumps(body, ensure_ascii=False).encode()
    while len(data) > MAX_PAYLOAD and body.get("content"):
        body["content"] = body["content"][:max(0, len(body["content"]) - (len(data) - MAX_PAYLOAD) - 1)] + "…"
        if len(body["content"]) <= 1:
            body["content"] = ""
        data = json.dumps(body, ensure_ascii=False).encode()
    return data


class WebPushChannel(Channel):
    needs = None        # addressed by the user's subscriptions, not a contact field (so planned for all)
    missing = "no push subscription for this user"

    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.session = transport.session(app.config.get("WEBPUSH_RESOLVE"), app.config.get("WEBPUSH_CA_FILE") or None)
        self.ttl = int(options.get("ttl", 86400))
        self.timeout = float(options.get("timeout", 10))
        self.vapid = None
        if app.config.get("VAPID_PRIVATE_KEY"):
            self.vapid = Vapid.from_raw(app.config["VAPID_PRIVATE_KEY"].rstrip("=").encode())

    def address(self, contact):
        """The user's subscriptions (none while Web Push is not configured)."""
        if self.vapid is None or not contact.get("user_id"):
            return None
        with db.connection() as conn:
            return repository.for_user(conn, contact["user_id"]) or None

    def _push(self, subscription, data):
        endpoint = subscription["endpoint"]
        claims = {"sub": current_app.config["VAPID_SUBJECT"],
                  "aud": "https://" + endpoint.split("/")[2]}
        headers = self.vapid.sign(claims)
        info = {"endpoint": endpoint, "keys": {"p256dh": subscription["p256dh"], "auth": subscription["auth"]}}
        b64url_decode(subscription["auth"])   # stored checked; a bad row fails here, not inside the cipher
        return WebPusher(info, requests_session=self.session).send(data, headers, ttl=self.ttl,
                                                                  timeout=self.timeout)

    def send(self, outbound):
        subscriptions = self.address(dict(outbound.contact, user_id=outbound.user_id))
        if not subscriptions:
            raise PermanentError("no push subscription", "invalid_recipient")
        data = payload(outbound.notification, outbound.template)
        accepted, retry, refused = [], None, None
        for subscription in subscriptions:
            try:
                response = self._push(subscription, data)
            except requests.RequestException as exc:
                retry = RetryableError(f"{type(exc).__name__}: {exc}"[:500])
                retry.__cause__ = exc
                continue
            status = response.status_code
            if status in (200, 201, 202):
                accepted.append(response.headers.get("Location") or str(subscription["id"]))
            elif status in (404, 410):
                with db.connection() as conn, db.transaction(conn):
                    if repository.forget_endpoint(conn, subscription["id"]):
                        audit.record(conn, "webpush.expire", ("user", outbound.user_id),
                                     {"subscription": str(subscription["id"]), "status": status},
                                     actor=("system", "webpush"))
                log.info("web push subscription %s gone (%d): deleted", subscription["id"], status)
                refused = refused or PermanentError(f"subscription gone ({status})", "invalid_recipient", status)
            elif status in (408, 425, 429) or status >= 500:
                retry = RetryableError(f"push service answered {status}", http_kind(status), status)
            else:
                refused = PermanentError(f"push service refused ({status}): {response.text[:200]}",
                                         http_kind(status), status)
        if accepted:
            provider_id = accepted[0][:500]
            outbound.accepted(provider_id)
            return provider_id
        raise retry or refused
