"""Plain text in, plain text out: markup and invisible formatting removed, other characters kept.

nh3 (the Ammonia sanitiser) drops every tag, and the content of script and
style elements; its output is HTML-escaped text, which we unescape back to the
characters the caller wrote, so "a < b & c" stays "a < b & c" while
"<script>x</script>hi" becomes "hi". Whatever renders HTML escapes again.

Encoded markup ("&amp;lt;script&amp;gt;") unescapes into markup, so cleaning
repeats until the text no longer changes: the result is a fixed point, which
no further decoding can turn into a tag. A text that is still changing after
`MAX_PASSES` rounds is refused (`UnsettledText`), never passed on half-decoded:
each round undoes two levels of encoding, so only text built to nest
entities dozens deep gets there, and the bound caps the work one field costs.

Unicode format characters (category Cf: bidi overrides, zero-width spaces and
joiners, the BOM, tag characters) are removed in the same rounds, so one hidden
inside a tag name ("<scr\\u200bipt>") cannot keep it from being recognised.
Control characters are not removed but refused (`control_problem`): a caller
that sends one has a bug worth hearing about, and silently editing a bank's
message is worse than a 422 (docs/security/content.md).
"""
import functools
import html
import re
import sys
import unicodedata
from urllib.parse import urlsplit

import nh3

_DROP_WITH_CONTENT = {"script", "style", "template", "noscript", "iframe", "object"}

MAX_PASSES = 16

# C0 and C1 controls, DEL, and the two Unicode line breaks: everything that can end or bend a line
# in a header, a log line or a terminal (str.splitlines() breaks at \x0b, \x0c, \x1c-\x1e, \x85, too).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same, minus what multi-line text (a notification's content) may hold; CR is made LF by cleaning.
_CONTROLS_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What cleaning can change: tags (need "<"), entities (need "&"), CR (HTML parsing makes it LF), NUL.
_MARKUP_HINTS = re.compile("[<&\r\x00]")


class UnsettledText(ValueError):
    """Text nested so deep in character references that it did not settle; refused rather than guessed."""


@functools.cache
def _format_chars():
    """Every code point of category Cf as a class of ranges (built on first use: the scan of the
    code space takes ~80 ms; ranges search about six times faster than the 163 characters listed)."""
    points = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    ranges = []
    for point in points:
        if ranges and ranges[-1][1] == point - 1:
            ranges[-1][1] = point
        else:
            ranges.append([point, point])
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]")


def strip_format(value):
    """Remove the invisible characters that reorder or hide text (bidi overrides, zero-width)."""
    return value if value.isascii() else _format_chars().sub("", value)


def has_format_chars(value):
    return not value.isascii() and _format_chars().search(value) is not None


def _one_pass(value):
    """Two levels of encoding undone: the first unescape, then nh3's parse (its serialised output
    re-escapes what the parse decoded, which the last unescape takes back)."""
    value = html.unescape(strip_format(value))
    return html.unescape(nh3.clean(value, tags=set(), clean_content_tags=_DROP_WITH_CONTENT))


def plain_text(value):
    """Remove markup and format characters from user-supplied text; `UnsettledText` if it never settles."""
    if value is None:
        return None
    for _ in range(MAX_PASSES):
        cleaned = _one_pass(value)
        if cleaned == value:
            return value
        value = cleaned
    raise UnsettledText(f"Still holds encoded markup after {MAX_PASSES} rounds of decoding.")


def clean_text(value):
    """plain_text, without the parse for text it cannot change (most notifications, ~20 µs a field).

    tests/dispatch/test_trigger_validation.py checks the equivalence on generated text."""
    if _MARKUP_HINTS.search(value) or has_format_chars(value):
        return plain_text(value)
    return value


def display_text(value):
    """Text about to be shown (an email, an SMS), which may predate today's cleaning: never raises;
    text that does not settle loses every "<" instead, so no tag can be left in it."""
    if not isinstance(value, str):
        return value
    value = _SURROGATE.sub("\ufffd", value)
    try:
        return clean_text(value)
    except UnsettledText:
        return strip_format(value).replace("<", "")


def control_problem(value, multiline=False):
    """Why `value` may not be stored as text (a control character, an unpaired surrogate), or None.

    `multiline` text (content) may hold LF, CR and TAB; one-line text (a title) none of them."""
    surrogate = _SURROGATE.search(value)
    if surrogate:
        return f"Must not contain unpaired surrogates (found at position {surrogate.start()})."
    found = (_CONTROLS_MULTILINE if multiline else CONTROLS).search(value)
    if found:
        allowed = " other than line feed and tab" if multiline else " (line breaks and tabs included)"
        return (f"Must not contain control characters{allowed}: "
                f"found U+{ord(found.group()):04X} at position {found.start()}.")
    return None


# WHATWG URL parsing (what browsers do) drops leading/trailing C0 controls and spaces and every tab
# and newline inside, and reads "\" as "/" in http(s) URLs: "/\evil.example" is "//evil.example".
_NOT_IN_LINKS = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]")


def safe_link(value):
    """A relative path or an https URL; anything else (javascript:, data:, //host, /\\host) is refused."""
    if value is None:
        return True
    if _NOT_IN_LINKS.search(value) or has_format_chars(value):
        return False
    as_browsers_read = value.replace("\\", "/")
    parts = urlsplit(as_browsers_read)
    if parts.scheme == "" and parts.netloc == "":
        return value.startswith("/") and not as_browsers_read.startswith("//")
    return parts.scheme == "https" and bool(parts.netloc)
