"""Text fields are plain text: no markup survives, whatever its encoding depth; other characters stay."""
import html
import html.parser
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.sanitize import MAX_PASSES, UnsettledText, control_problem, plain_text, safe_link, strip_format


@pytest.mark.parametrize("given, kept", [
    ("a < b & c > d", "a < b & c > d"),
    ("<script>alert(1)</script>Hi", "Hi"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;Hi", "Hi"),
    ("<img src=x onerror=alert(1)>Hi", "Hi"),
    ("<b>bold</b> text", "bold text"),
    ("Grüße, 你好 \"quoted\" 'single'", "Grüße, 你好 \"quoted\" 'single'"),
    ("Pay\u202egnp.exe\u202c now", "Paygnp.exe now"),                  # a bidi override
    ("pass\u200bword\u2060 \ufeffreset\u00ad", "password reset"),      # zero-width, word joiner, BOM, soft hyphen
    ("<scr\u200bipt>alert(1)</scr\u200bipt>Hi", "Hi"),                 # hidden inside a tag name
    ("&#x200B;x&#8238;y", "xy"),                                        # encoded format characters
])
def test_plain_text(given, kept):
    assert plain_text(given) == kept


def encode(text, times):
    return text if times == 0 else encode(html.escape(text, quote=False), times - 1)


def test_five_times_encoded_script_is_removed():
    """The review's example: `<script>` entity-encoded 5 times came out as a live tag (5 passes)."""
    title = encode("<script>alert(1)</script>", 5) + "Pay now"
    assert title.startswith("&amp;amp;amp;amp;lt;script&amp;amp;amp;amp;gt;")
    assert plain_text(title) == "Pay now"


def test_text_that_never_settles_is_refused():
    deep = encode("<script>alert(1)</script>", 2 * MAX_PASSES + 2)
    with pytest.raises(UnsettledText):
        plain_text(deep)


# ---------------------------------------------------------------- any encoding depth (property)

_TAGS = ["script", "img", "svg", "iframe", "a", "b", "style", "body", "details", "video", "math", "object",
         "SCRIPT", "ImG", "x-y"]
_HANDLERS = ["onerror", "onload", "onclick", "ONMOUSEOVER", "onfocus", "OnToggle", "onanimationstart"]
_VALUES = ["alert(1)", '"x()"', "'y'", "`z`"]
_FORMAT = ["\u200b", "\u202e", "\u2066", "\ufeff", "\u00ad", "\u2060"]


@st.composite
def markup(draw):
    """A fragment of HTML with tags, event-handler attributes, comments, text and format characters."""
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        tag = draw(st.sampled_from(_TAGS))
        attrs = "".join(f" {draw(st.sampled_from(_HANDLERS))}={draw(st.sampled_from(_VALUES))}"
                        for _ in range(draw(st.integers(0, 2))))
        parts.append(draw(st.sampled_from([
            f"<{tag}{attrs}>", f"</{tag}>", f"<{tag}{attrs}/>", "<!--c-->", "<![CDATA[x]]>", "<?pi?>",
            draw(st.text(alphabet="ab <>&;=/\"'", max_size=6)), "alert(1)"])))
        if draw(st.booleans()):
            parts.insert(draw(st.integers(0, len(parts))), draw(st.sampled_from(_FORMAT)))
    return "".join(parts)


def _reference(char, style):
    """One character as a character reference of the given style (named, decimal, hex, padded, bare)."""
    named = {"<": "lt", ">": "gt", "&": "amp", '"': "quot", "'": "apos", "=": "equals", "/": "sol"}
    if style == "named" and char in named:
        return f"&{named[char]};"
    if style == "bare" and char in "<>&":                 # legacy references without the semicolon
        return "&" + named[char]
    if style == "hex":
        return f"&#x{ord(char):x};"
    if style == "HEX":
        return f"&#X{ord(char):X};"
    if style == "padded":
        return f"&#{ord(char):07d};"
    return f"&#{ord(char)};"


@st.composite
def encoded(draw):
    """Markup encoded 0 to 12 times, each time with a mix of reference styles per character."""
    text = draw(markup())
    for _ in range(draw(st.integers(0, 12))):
        styles = st.sampled_from(["named", "decimal", "hex", "HEX", "padded", "bare"])
        text = "".join(_reference(c, draw(styles)) if c in "<>&\"'=/" and (c == "&" or draw(st.booleans()))
                       else c for c in text)
    return text


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found.append(("start", tag, attrs))

    def handle_endtag(self, tag):
        self.found.append(("end", tag))

    def handle_comment(self, data):
        self.found.append(("comment", data))

    def handle_decl(self, decl):
        self.found.append(("decl", decl))

    def handle_pi(self, data):
        self.found.append(("pi", data))

    def unknown_decl(self, data):
        self.found.append(("decl", data))


# what starts a tag, a comment or a declaration in the HTML tokenizer's data state
_TAG_OPEN = re.compile(r"<[A-Za-z!?]|</[A-Za-z]")
_HANDLER = re.compile(r"<[^>]*\bon[a-z]+\s*=", re.IGNORECASE)


def assert_no_markup(text):
    assert not _TAG_OPEN.search(text), text
    assert not _HANDLER.search(text), text
    parser = _Tags()
    parser.feed(text)
    parser.close()
    assert parser.found == [], (text, parser.found)
    assert strip_format(text) == text


@settings(max_examples=1500, deadline=None)
@given(encoded())
@example("&amp;amp;amp;amp;lt;script&amp;amp;amp;amp;gt;alert(1)&amp;amp;amp;amp;lt;/script&amp;amp;amp;amp;gt;")
@example("&#x26;#x3c;img src=x onerror=alert(1)&#38;gt;")
@example("&ltscript&gtalert(1)&lt/script&gt")
def test_no_tag_survives_any_encoding_depth(text):
    """Cleaned text holds no tag, comment or event handler, and no later decoding (a client that
    unescapes once or twice more) can turn it into one: it is a fixed point of the cleaning."""
    try:
        cleaned = plain_text(text)
    except UnsettledText:
        return                                     # refused (422 at the API): nothing reaches a client
    assert plain_text(cleaned) == cleaned
    decoded = cleaned
    for _ in range(3):
        assert_no_markup(decoded)
        decoded = html.unescape(decoded)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12))
def test_every_depth_up_to_twelve_settles(times):
    """Twelve levels settle well within the bound: legitimate text is never refused as too deep."""
    assert plain_text("Pay " + encode('<img src=x onerror="alert(1)">', times) + "now") == "Pay now"


# ---------------------------------------------------------------- control characters


@pytest.mark.parametrize("value, multiline, found", [
    ("ok", False, None),
    ("line\nline\ttab\r\n", True, None),
    ("a\u2028b", True, None),
    ("a\nb", False, "U+000A"),
    ("a\tb", False, "U+0009"),
    ("a\u2028b", False, "U+2028"),
    ("bell\x07", True, "U+0007"),
    ("vt\x0b", True, "U+000B"),
    ("fs\x1c", True, "U+001C"),
    ("del\x7f", True, "U+007F"),
    ("nel\x85", True, "U+0085"),
    ("csi\x9b", False, "U+009B"),
    ("half\ud800", True, "surrogates"),
])
def test_control_problem(value, multiline, found):
    problem = control_problem(value, multiline)
    if found is None:
        assert problem is None
    else:
        assert found in problem


# ---------------------------------------------------------------- links


@pytest.mark.parametrize("link, ok", [
    ("/chat/room/456", True), ("https://bank.example/x", True), ("/a/b?c=d&e=f#g", True),
    ("https://bank.example/a\\b", True),
    ("javascript:alert(1)", False), ("data:text/html,x", False), ("//evil.example", False),
    ("http://plain.example", False),
    ("/\\evil.example", False), ("\\\\evil.example", False), ("\\/evil.example", False),
    ("/\\\\evil.example", False), ("\\evil.example", False),
    ("/\t/evil.example", False), ("/\n/evil.example", False), (" //evil.example", False),
    ("/x\x00", False), ("/\u200b/evil.example", False), ("java\tscript:alert(1)", False),
])
def test_links(link, ok):
    assert safe_link(link) is ok
