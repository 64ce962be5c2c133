"""Text fields are plain text: no markup survives, other characters stay as written."""
import pytest

from app.sanitize import plain_text, safe_link


@pytest.mark.parametrize("given, kept", [
    ("a < b & c > d", "a < b & c > d"),
    ("<script>alert(1)</script>Hi", "Hi"),
    ("&lt;script&gt;alert(1)&lt;/script&gt;Hi", "Hi"),
    ("<img src=x onerror=alert(1)>Hi", "Hi"),
    ("<b>bold</b> text", "bold text"),
    ("Grüße, 你好 \"quoted\" 'single'", "Grüße, 你好 \"quoted\" 'single'"),
])
def test_plain_text(given, kept):
    assert plain_text(given) == kept


@pytest.mark.parametrize("link, ok", [
    ("/chat/room/456", True), ("https://bank.example/x", True), ("javascript:alert(1)", False),
    ("data:text/html,x", False), ("//evil.example", False), ("http://plain.example", False),
])
def test_links(link, ok):
    assert safe_link(link) is ok
