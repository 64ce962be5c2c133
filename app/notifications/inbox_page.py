"""`GET /inbox`: the demo browser inbox (app/static/inbox.html), only when INBOX_PAGE_ENABLED.

The page and its client (`/static/notifications.js`, served by Flask's static
folder whatever the setting) load nothing from outside the service. The page
is sent with a Content-Security-Policy that allows only this origin and the
page's own inline scripts (by hash), so no notification text can ever run as
script in it.
"""
import base64
import hashlib
import re
from pathlib import Path

from flask import Blueprint, Response

PAGE = Path(__file__).parent.parent / "static" / "inbox.html"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

blp = Blueprint("inbox_page", __name__)


def _policy(html):
    hashes = " ".join(
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        for body in _INLINE_SCRIPT.findall(html))
    return ("default-src 'none'; script-src 'self' " + hashes + "; style-src 'self'; img-src 'self' data:;"
            " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@blp.get("/inbox")
def inbox():
    """The inbox page; the token comes from `#token=…` when it loads (then erased from the address) or its form."""
    html = PAGE.read_text(encoding="utf-8")
    return Response(html, mimetype="text/html", headers={
        "Content-Security-Policy": _policy(html), "Cache-Control": "no-cache"})


def init_app(app):
    """Serve /inbox only when INBOX_PAGE_ENABLED (off by default: it is a demo)."""
    if app.config.get("INBOX_PAGE_ENABLED"):
        app.register_blueprint(blp)
