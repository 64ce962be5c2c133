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
