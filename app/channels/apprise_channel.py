"""Any service Apprise speaks (Slack, Teams, Telegram, Discord, ntfy, a JSON endpoint, ...).

Options (notifications.yaml):

    channels:
      ops_chat:
        type: apprise
        urls: ["${SLACK_WEBHOOK_URL}", "json://hooks.internal:8080/notify"]
        needs: null          # or a contact field; then {recipient} may appear in the URLs
        timeout: 10          # seconds for the whole send

A `{recipient}` is URL-encoded whole (`quote(..., safe="")`) before it is
placed, wherever it stands in the URL: it can neither add a query option nor
leave its path segment. Apprise decodes it again where it reads the value.

Each URL (a `${NAME}` value is read from the environment, so tokens stay out
of the file) is checked at start-up: one Apprise does not understand stops
the service with one line naming the channel and the URL's position. The
title and body come from the event's templates `apprise_title` (default
`{title}`) and `apprise_body` (default `{content}` plus the link).

Apprise answers only "sent" or "not sent" (it does not tell a refusal from
an outage), so a failed send is retryable; the reason recorded is what
Apprise logged about it.
"""
from urllib.parse import quote

import apprise
from apprise.manager_plugins import NotificationManager

from ..errors import ConfigError
from .base import Channel, RetryableError, expand_env
from .email_render import absolute_link
from .templates import render

N_MGR = NotificationManager()   # Apprise's plugin registry (a shared singleton)


class AppriseChannel(Channel):
    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.needs = options.get("needs")
        source = app.config["NOTIFICATIONS_CONFIG"]
        urls = options.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not isinstance(urls, list):
            raise ConfigError(source, f"channels.{name}.urls", "must be a non-empty list of Apprise URLs")
        self.urls = [expand_env(url) if isinstance(url, str) else url for url in urls]
        self.timeout = float(options.get("timeout", 10))
        self.per_recipient = any("{" in url for url in self.urls if isinstance(url, str))
        for i, url in enumerate(self.urls):
            if not self._usable(url):
                scheme = url.partition("://")[0] if isinstance(url, str) and "://" in url else "?"
                # never echo the URL itself: it usually carries a token
                raise ConfigError(source, f"channels.{name}.urls[{i}]",
                                  f"not a URL Apprise can use (scheme {scheme!r}; empty environment variable?)")
        self.apobj = None if self.per_recipient else self._apprise(self.urls)

    @staticmethod
    def _usable(url):
        """Whether Apprise understands the URL; a per-recipient template only needs a known scheme."""
        if not isinstance(url, str) or "://" not in url:
            return False
        if "{" in url:
            return url.partition("://")[0].lower() in N_MGR
        return bool(apprise.Apprise().add(url))

    @staticmethod
    def _apprise(urls):
        apobj = apprise.Apprise()
        for url in urls:
            apobj.add(url)
        return apobj

    def _message(self, outbound):
        n, templates = outbound.values(), outbound.template
        title = " ".join(render(templates.get("apprise_title", "{title}"), n).split())
        body = render(templates.get("apprise_body", "{content}"), n).strip()
        link = absolute_link(self.app, n.get("link_url"))
        if link and "apprise_body" not in templates:
            body += f"\n\n{n.get('link_text') or 'Open'}: {link}"
        return title, body or title

    def send(self, outbound):
        apobj = self.apobj
        if apobj is None:
            # encoded whole: an address's "?", "/" or "+" would otherwise add Apprise options or path segments
            values = {"recipient": quote(self.address(outbound.contact) or "", safe=""),
                      "user_id": quote(outbound.user_id, safe="")}
            apobj = self._apprise([render(url, values) for url in self.urls])
        title, body = self._message(outbound)
        result = apobj.notify(body=body, title=title, body_format=apprise.NotifyFormat.TEXT,
                              timeout=self.timeout)
        if not result:
            reasons = [entry.message for entry in result.logs()] if hasattr(result, "logs") else []
            reason = "; ".join(dict.fromkeys(reasons)) or "Apprise reported a failed notification"
            raise RetryableError(f"{self.name}: {reason}"[:1000])
        outbound.accepted(None)
        return None
