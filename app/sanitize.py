"""Plain text in, plain text out: markup is removed, other characters kept as written.

nh3 (the Ammonia sanitiser) drops every tag, and the content of script and
style elements; its output is HTML-escaped text, which we unescape back to the
characters the caller wrote, so "a < b & c" stays "a < b & c" while
"<script>x</script>hi" becomes "hi". Whatever renders HTML escapes again.
"""
import html
from urllib.parse import urlsplit

import nh3

_DROP_WITH_CONTENT = {"script", "style", "template", "noscript", "iframe", "object"}


def plain_text(value):
    """Remove markup from user-supplied text."""
    if value is None:
        return None
    # Repeat until stable: escaped markup ("&lt;script&gt;") unescapes into markup,
    # which the next pass removes, so no tag survives however it was encoded.
    for _ in range(5):
        cleaned = html.unescape(nh3.clean(value, tags=set(), clean_content_tags=_DROP_WITH_CONTENT))
        if cleaned == value:
            break
        value = cleaned
    return value


def safe_link(value):
    """A relative path or an https URL; anything else (javascript:, data:) is refused."""
    if value is None:
        return True
    parts = urlsplit(value.strip())
    if parts.scheme == "" and parts.netloc == "":
        return value.startswith("/") and not value.startswith("//")
    return parts.scheme == "https" and bool(parts.netloc)
