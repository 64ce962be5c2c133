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
    """The templates of one event: defaults, then the group's, then the event's own."""
    templates = dict(domain.templates.get("default", {}))
    templates.update(domain.templates.get(group, {}) if isinstance(domain.templates.get(group), dict) else {})
    templates.update(domain.templates.get(f"{group}.{event}", {}))
    return templates


def shown(notification):
    """The notification as channels render it: its text cleaned again (a row stored before today's
    rules may still hold markup or format characters; for any other, a no-op)."""
    return dict(notification, **{name: display_text(notification.get(name)) for name in SHOWN_TEXT})
