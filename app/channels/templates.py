"""Short text templates (`{title}: {content}`) with missing values left empty."""
import string


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
