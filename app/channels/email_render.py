"""Email subject, text and HTML from the event's templates; every value escaped in HTML.

Templates (notifications.yaml `templates:`, per default / group / event):
`email_subject`, `email_text` and `email_html`, with `{title}`, `{content}`,
`{link_url}`, `{link_text}`, `{type}`, `{event}`, ... of the notification,
plus `{link}` (a ready HTML paragraph with the link, or nothing) and
`{preferences_url}`, and the trigger's `amounts` written per locale. In
`email_html` every value is HTML-escaped before it is placed; the template
itself is trusted configuration (write literal braces as `{{` and `}}`).
"""
from markupsafe import escape

from .. import i18n
from .templates import render

DEFAULT_TEXT = "{title}\n\n{content}\n"

DEFAULT_HTML = """<!doctype html>
<html><body style="font-family: sans-serif">
<h2>{title}</h2>
<p style="white-space: pre-line">{content}</p>
{link}
<hr><p style="font-size: small">{settings_note}
<a href="{preferences_url}">{change_them}</a>.</p>
</body></html>"""

SUBJECT_LIMIT = 200


def _base(app):
    return app.config["PUBLIC_URL"].rstrip("/")


def preferences_url(app):
    return _base(app) + "/v1/notifications/preferences"


def absolute_link(app, link_url):
    """A notification's link as an absolute URL (relative paths are the service's own)."""
    if link_url and link_url.startswith("/"):
        return _base(app) + link_url
    return link_url or None


def render_email(app, outbound):
    """(subject, text, html) for one notification."""
    n, templates = outbound.values(), outbound.template
    # one header line: no CR/LF or other line breaks (header injection), no runs of blanks
    subject = " ".join(render(templates.get("email_subject", "{title}"), n).split())[:SUBJECT_LIMIT]
    link_url = absolute_link(app, n.get("link_url"))
    values = dict(n, link_url=link_url, preferences_url=preferences_url(app))
    locale = outbound.locale
    values.update(settings_note=i18n.gettext(locale, "You receive this because of your notification settings:"),
                  change_them=i18n.gettext(locale, "change them"))
    text = render(templates.get("email_text", DEFAULT_TEXT), values)
    open_text = n.get("link_text") or i18n.gettext(locale, "Open")
    if link_url and "{link_url}" not in templates.get("email_text", DEFAULT_TEXT):
        text += f"\n{open_text}: {link_url}\n"
    escaped = {k: escape(v) if isinstance(v, str) else v for k, v in values.items()}
    link = f'<p><a href="{escaped["link_url"]}">{escape(open_text)}</a></p>' if link_url else ""
    html = render(templates.get("email_html", DEFAULT_HTML), dict(escaped, link=link))
    return subject, text, html


def unsubscribe_targets(app, options, outbound):
    """The List-Unsubscribe URLs of a delivery; none for an event a user may not switch off."""
    group = app.config["DOMAIN"].groups.get(outbound.notification.get("type"))
    event = group.events.get(outbound.notification.get("event")) if group else None
    if event is not None and event.locked:
        return []
    values = dict(outbound.notification, user_id=outbound.user_id, preferences_url=preferences_url(app))
    targets = []
    if options.get("unsubscribe_mailto"):
        targets.append("mailto:" + render(options["unsubscribe_mailto"], values))
    targets.append(render(options.get("unsubscribe_url") or "{preferences_url}", values))
    return [" ".join(t.split()) for t in targets if t.strip()]
