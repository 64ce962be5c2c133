"""Email subject, text and HTML from the event's templates; every value escaped in HTML."""
from markupsafe import escape

from .templates import render

DEFAULT_HTML = """<!doctype html>
<html><body style="font-family: sans-serif">
<h2>{title}</h2>
<p>{content}</p>
{link}
<hr><p style="font-size: small">You receive this because of your notification settings:
<a href="{preferences_url}">change them</a>.</p>
</body></html>"""


def render_email(app, outbound):
    """(subject, text, html) for one notification."""
    n, templates = outbound.notification, outbound.template
    subject = render(templates.get("email_subject", "{title}"), n).replace("\n", " ")[:200]
    text = render(templates.get("email_text", "{title}\n\n{content}\n"), n)
    base = app.config["PUBLIC_URL"].rstrip("/")
    link_url = n.get("link_url")
    if link_url and link_url.startswith("/"):
        link_url = base + link_url
    if link_url:
        text += f"\n{n.get('link_text') or 'Open'}: {link_url}\n"
    escaped = {k: escape(v) if isinstance(v, str) else v for k, v in n.items()}
    link = (f'<p><a href="{escape(link_url)}">{escape(n.get("link_text") or "Open")}</a></p>'
            if link_url else "")
    html = render(templates.get("email_html", DEFAULT_HTML),
                  dict(escaped, link=link, preferences_url=escape(base + "/v1/notifications/preferences")))
    return subject, text, html
