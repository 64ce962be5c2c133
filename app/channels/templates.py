"""Short text templates (`{title}: {content}`) with missing values left empty."""
import string

from ..sanitize import display_text

SHOWN_TEXT = ("title", "content", "link_text")


class _Blank(dict):
    def __missing__(self, key):
        return ""


def render(template, values):
    """Fill `{name}` fields from values; unknown names render empty, never raise."""
    safe = _Blank({k: "" if v is None else v for k, v in values.items()})
    return string.Formatter().vformat(template, (), safe)


def event_templates(domain, group, event):
    """The templates of one event: defaults, then the group's, then the event's own (untranslated;
    a contact's language: app/i18n.localised_templates)."""
    from .. import i18n
    return i18n.localised_templates(domain, group, event, None)[0]


def shown(notification):
    """The notification as channels render it: its text cleaned again (a row stored before today's
    rules may still hold markup or format characters; for any other, a no-op)."""
    return dict(notification, **{name: display_text(notification.get(name)) for name in SHOWN_TEXT})


# What a teaser event's external message says when notifications.yaml names no teaser template.
TEASER_DEFAULTS = {
    "teaser_title": "{bank_name}: you have a new secure message",
    "teaser_content": "{bank_name}: you have a new secure message. Open the app to read it.",
    "teaser_link_text": "Open the app",
    "teaser_email_subject": "{title}",
    "teaser_sms": "{content} {link_url}",
}
TEASER_OVERRIDES = ("email_subject", "email_text", "email_html", "sms", "apprise_title", "apprise_body")
TEASER_KEPT = ("id", "customer_id", "type", "event", "created_at")


def teaser(app, domain, notification, templates):
    """(notification, templates) as an external channel sees a teaser event: the title, content,
    link and record reference replaced by the teaser's text and the inbox link, and every
    `teaser_<name>` template in place of `<name>`. Built from the kept fields alone, so no
    template (a webhook body, an operator's `{title}`) can reach the real title or content:
    those go through third-party gateways and onto lock screens."""
    values = {key: notification.get(key) for key in TEASER_KEPT}
    values.update(bank_name=domain.teaser["bank_name"], public_url=app.config["PUBLIC_URL"].rstrip("/"))
    values["inbox_url"] = render(domain.teaser["inbox_url"], values)
    merged = dict(TEASER_DEFAULTS, **templates)
    shown_values = dict(values, title=render(merged["teaser_title"], values),
                        content=render(merged["teaser_content"], values),
                        link_url=values["inbox_url"], link_text=render(merged["teaser_link_text"], values),
                        rec_type=None, rec_id=None, read=False, read_at=None)
    chosen = {key: value for key, value in templates.items() if not key.startswith("teaser_")}
    chosen.update({name: merged[f"teaser_{name}"] for name in TEASER_OVERRIDES if f"teaser_{name}" in merged})
    return shown_values, chosen
