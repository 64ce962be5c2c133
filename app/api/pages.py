"""The browsable API pages, with no script from anyone else's server.

`/docs` is Swagger UI served from the pinned PyPI package `swagger-ui-bundle-v2`
(its files are byte-identical to npm's `swagger-ui-dist` of the same version:
docs/security/http.md has the check), under `/docs/assets/`, with a
Content-Security-Policy that lets the page load nothing from another origin.
Swagger UI's online validator badge (which sends the document's URL to
swagger.io) is off.

`/redoc` needs a script no Python package ships: it exists only in development
(DEVELOPMENT=true), pinned to one version with Subresource Integrity, so a
changed file on the CDN is refused by the browser. A deploy answers it 404.
"""
from flask import Blueprint, abort, render_template_string, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

ASSETS_URL = "/docs/assets/"
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"})
SWAGGER_UI_CONFIG = {"validatorUrl": None}
POLICY = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
          "form-action 'none'; frame-ancestors 'none'")
SWAGGER_PAGE = "api-docs.openapi_swagger_ui"    # flask-smorest's endpoint

REDOC_SCRIPT = "https://cdn.jsdelivr.net/npm/redoc@2.5.2/bundles/redoc.standalone.js"
REDOC_INTEGRITY = "sha384-70P5pmIdaQdVbxvjhrcTDv1uKcKqalZ3OHi7S2J+uzDl0PW8dO6L+pHOpm9EEjGJ"
REDOC_PAGE = """<!DOCTYPE html>
<html><head><title>{{ title }}</title><meta name="viewport" content="width=device-width, initial-scale=1">
<style>body { margin: 0; padding: 0; }</style></head>
<body><redoc spec-url="/openapi.json" lazy-rendering></redoc>
<script src="{{ script }}" integrity="{{ integrity }}" crossorigin="anonymous"></script></body></html>
"""

blp = Blueprint("docs_pages", __name__)


@blp.get(ASSETS_URL + "<filename>")
def asset(filename):
    """One of Swagger UI's files from the installed package; nothing else of its directory."""
    if filename not in ASSETS:
        abort(404)
    return send_from_directory(swagger_ui_path, filename, max_age=86400)


def redoc():
    """ReDoc from its CDN, development only: pinned and checked by the browser (SRI)."""
    return render_template_string(REDOC_PAGE, title="Notifications", script=REDOC_SCRIPT, integrity=REDOC_INTEGRITY)


def _policy(response):
    if request.endpoint == SWAGGER_PAGE:
        response.headers["Content-Security-Policy"] = POLICY
    return response


def configure(app):
    """flask-smorest's settings for the pages; call before the Api is built."""
    app.config.setdefault("OPENAPI_SWAGGER_UI_PATH", "/docs")
    app.config.setdefault("OPENAPI_SWAGGER_UI_URL", ASSETS_URL)
    app.config.setdefault("OPENAPI_SWAGGER_UI_CONFIG", SWAGGER_UI_CONFIG)
    app.config["OPENAPI_REDOC_PATH"] = None   # ours below, with integrity, in development only


def init_app(app):
    app.register_blueprint(blp)
    if app.config["DEVELOPMENT"]:
        app.add_url_rule("/redoc", "redoc", redoc)
    app.after_request(_policy)
