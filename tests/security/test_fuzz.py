"""Fuzzing every operation of /openapi.json with schemathesis, straight on the WSGI app.

Each operation gets a bounded number of generated requests (valid and invalid ones), sent with
the credentials its `security` names (a user's bearer token or an API key), and every response
is checked: no 5xx, a status the document lists for the operation, the documented content type,
the documented headers and a body that matches the documented schema.

Not fuzzed: `GET /v1/notifications/sse`, the stream: its response never ends, so a call through
the WSGI app would hang; its auth and query handling are covered by tests/streams/test_streams.py and
tests/security/test_access_control.py.

Found cases are kept as plain tests in tests/security/test_fuzz_regressions.py.
"""
import os
import re
import uuid
from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance)
from werkzeug.exceptions import HTTPException

from app.webpush.keys import new_pair
from testkit.identity import API_KEY, make_token
from testkit.rows import insert_notification

# CI: a fixed number of examples from a fixed seed, so a run is repeatable and stays well under
# a minute. Deeper local runs: FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 pytest tests/security/test_fuzz.py
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
DERANDOMIZE = not os.environ.get("FUZZ_RANDOM")
USER_ID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


def operations(app):
    """Every operation of the app's document, except the never-ending stream."""
    loaded = schemathesis.openapi.from_wsgi("/openapi.json", app)
    loaded = loaded.exclude(method="GET", path="/v1/notifications/sse")
    return [result.ok() for result in loaded.get_all_operations()]


def credentials(operation):
    """The headers that satisfy the operation's documented security."""
    schemes = {name for requirement in operation.definition.raw.get("security") or [] for name in requirement}
    headers = {}
    if "bearerAuth" in schemes:
        headers["Authorization"] = f"Bearer {make_token(USER_ID, exp_in=3600)}"
    if "apiKeyAuth" in schemes:
        headers["X-API-Key"] = API_KEY
    return headers


def router(app):
    """The endpoint a generated request would really reach, or None (the app answers 404/405)."""
    adapter = app.url_map.bind("localhost")

    def route(method, path):
        try:
            return adapter.match(unquote(path), method=method)[0]
        except HTTPException:
            return None
    return route


def fuzz(operation, mode, route):
    """Run MAX_EXAMPLES generated cases of one operation; the first failing case's report, or None."""
    own = route(operation.method.upper(), re.sub(r"{[^}]+}", "00000000-0000-0000-0000-000000000000",
                                                  operation.path))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        # A path id spelt like a sibling route (`/v1/notifications/{id}` with id "preferences" or
        # "sse") reaches that route, not this operation: not a case of this one (and "sse" would
        # open the never-ending stream).
        reached = route(case.method.upper(), case.formatted_path)
        if reached is not None and reached != own:
            reject()
        # valid credentials replace whatever was generated for them; reading `meta` re-labels the
        # headers as valid, so a negative case is judged by what is still invalid in it
        if case.headers is None:
            case.headers = {}
        case.headers.update(credentials(operation))
        assert case.meta is not None
        case.call_and_validate(checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:  # nothing to make invalid (no parameters, no body)
            return None
        return f"{operation.label} [{mode.value}]: no request could be generated"
    except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup, with a curl line
        return f"{operation.label} [{mode.value}]\n{exc}"
    return None


@pytest.mark.slow
@pytest.mark.timeout(max(300, MAX_EXAMPLES * 12))
def test_api_conforms_to_its_openapi_document(make_app, db):
    """Every operation, valid and invalid requests; all failures reported together. Web Push is
    configured, as in a deploy that offers it (its 503 without keys is tested in test_webpush.py)."""
    public, private = new_pair()
    app = make_app(VAPID_PUBLIC_KEY=public, VAPID_PRIVATE_KEY=private, VAPID_SUBJECT="mailto:ops@bank.example")
    for _ in range(3):  # the fuzzed user has a few notifications, so the inbox is not always empty
        insert_notification(db, USER_ID)
    found = operations(app)
    assert len(found) >= 15, [op.label for op in found]
    route = router(app)
    failures = [report for operation in found for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                if (report := fuzz(operation, mode, route)) is not None]
    if failures:
        pytest.fail(f"{len(failures)} operation(s) failed:\n\n" + "\n\n".join(failures), pytrace=False)
