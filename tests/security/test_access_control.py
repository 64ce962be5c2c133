"""Who may call what: every endpoint of the app's url_map against every kind of wrong identity,
then object-level authorisation (OWASP API1) and customer scoping.

`ACCESS` classifies every (method, rule), and `SCOPE` names the API-key scope of every service
endpoint. The first tests walk `app.url_map` and fail when an endpoint is missing from either
table (or a table names one that is gone, or a scope that is not the one enforced): a new
endpoint cannot ship unclassified. Path parameters must be named in `PATH_OBJECTS` for the same
reason: each kind of object in a path gets its own "someone else's object" test below.

The wrong identities and where each is refused (docs/security/auth.md has the same table):

    no credential, garbage, basic auth     every non-open endpoint      test_bad_credentials_...
    expired token, token of another key    every user and stream one    test_bad_credentials_...
    a key where a token is needed (and
      the reverse)                         every non-open endpoint      test_bad_credentials_...
    a key without the scope                every service endpoint       test_bad_credentials_... (403)
    a reused stream ticket                 every stream endpoint        test_bad_credentials_...
    another user                           every <notification_id> one  test_another_users_notification_...
                                           every <trigger_id> one       test_another_keys_trigger_...
    another customer                       every customer_id query/body test_customer_outside_the_token_...
                                           every <notification_id> one  test_a_notification_of_a_customer_...
"""
import re
import uuid

import psycopg2.extras
import pytest

from app.security.api_keys import SCOPES, config_line
from app.security.auth import scope_of
from testkit.identity import API_KEY, make_token, OTHER_API_KEY, SERVICE
from testkit.rows import fetch_row, insert_delivery, insert_notification

OPEN, USER, SERVICE_ONLY, STREAM = "open", "user", "service", "stream"

ACCESS = {
    ("GET", "/static/<path:filename>"): OPEN,
    ("GET", "/healthz"): OPEN,
    ("GET", "/readyz"): OPEN,
    ("GET", "/metrics"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/redoc"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/assets/<filename>"): OPEN,
    ("GET", "/v1/notifications/sse"): STREAM,
    ("POST", "/v1/notifications/sse/ticket"): USER,
    ("POST", "/v1/notifications/<notification_id>/ack"): USER,
    ("POST", "/v1/notifications/trigger"): SERVICE_ONLY,
    ("GET", "/v1/notifications/triggers/<trigger_id>"): SERVICE_ONLY,
    ("DELETE", "/v1/notifications/triggers/<trigger_id>"): SERVICE_ONLY,
    ("POST", "/v1/notifications/sse"): SERVICE_ONLY,
    ("GET", "/v1/notifications/preferences"): USER,
    ("PUT", "/v1/notifications/preferences"): USER,
    ("GET", "/v1/notifications"): USER,
    ("GET", "/v1/notifications/<notification_id>"): USER,
    ("DELETE", "/v1/notifications/<notification_id>"): USER,
    ("PATCH", "/v1/notifications/<notification_id>/read"): USER,
    ("POST", "/v1/notifications/read-all"): USER,
    ("GET", "/v1/notifications/unread-count"): USER,
    ("GET", "/v1/notifications/<notification_id>/deliveries"): USER,
    ("GET", "/v1/notifications/users/<user_id>/contact"): SERVICE_ONLY,
    ("PUT", "/v1/notifications/users/<user_id>/contact"): SERVICE_ONLY,
    ("DELETE", "/v1/notifications/users/<user_id>/contact"): SERVICE_ONLY,
    ("GET", "/v1/notifications/stats"): SERVICE_ONLY,
    ("GET", "/v1/notifications/audit"): SERVICE_ONLY,
    ("GET", "/v1/notifications/<notification_id>/evidence"): SERVICE_ONLY,
    ("GET", "/v1/notifications/preferences/history"): USER,
    ("GET", "/v1/notifications/webpush/key"): USER,
    ("GET", "/v1/notifications/webpush/subscriptions"): USER,
    ("POST", "/v1/notifications/webpush/subscriptions"): USER,
    ("DELETE", "/v1/notifications/webpush/subscriptions/<subscription_id>"): USER,
    ("GET", "/v1/notifications/users/<user_id>/preferences/history"): SERVICE_ONLY,
    # a provider's delivery report: no API key or token, the provider's own signature instead
    # (X-Twilio-Signature or X-Notifications-Signature: tests/deliveries/test_reports.py)
    ("POST", "/v1/providers/<provider_name>/reports"): OPEN,
}

# The API-key scope of every service endpoint (app/security/api_keys.py SCOPES; enforced by service_required).
SCOPE = {
    ("POST", "/v1/notifications/trigger"): "trigger",
    ("GET", "/v1/notifications/triggers/<trigger_id>"): "trigger",
    ("DELETE", "/v1/notifications/triggers/<trigger_id>"): "trigger",
    ("POST", "/v1/notifications/sse"): "push",
    ("GET", "/v1/notifications/users/<user_id>/contact"): "contacts",
    ("PUT", "/v1/notifications/users/<user_id>/contact"): "contacts",
    ("DELETE", "/v1/notifications/users/<user_id>/contact"): "contacts",
    ("GET", "/v1/notifications/stats"): "stats",
    ("GET", "/v1/notifications/audit"): "audit",
    ("GET", "/v1/notifications/<notification_id>/evidence"): "audit",
    ("GET", "/v1/notifications/users/<user_id>/preferences/history"): "audit",
}

# What each path parameter names, and so which "another caller's object" test covers it.
PATH_OBJECTS = {
    "notification_id": "a user's notification: another user's answers exactly as a missing one",
    "trigger_id": "an API key's trigger: another key's answers exactly as a missing one",
    "user_id": "the subject of a contact or consent history: service-only, every key with the scope may read it",
    "filename": "a static file: public",
    "provider_name": "a provider that reports delivery: public names, each report signed with its own secret "
                     "(tests/deliveries/test_reports.py)",
    "subscription_id": "a user's Web Push subscription: another user's answers exactly as a missing one "
                       "(tests/channels/test_webpush.py)",
}

INVALID_USER = ("notifications_m.invalid_user_id", 401)
INVALID_KEY = ("notifications_m.invalid_api_key", 401)
INSUFFICIENT_SCOPE = ("notifications_m.insufficient_scope", 403)
INVALID_TICKET = ("notifications_m.invalid_ticket", 401)


def scoped_key(scopes):
    """A configured key granting exactly `scopes` (its secret is derived from them)."""
    return "scoped-" + "-".join(sorted(scopes)) + "-" + "x" * 32


# for each scope: a key with every other scope, and a key with that scope only
SCOPED_KEYS = [frozenset(SCOPES) - {scope} for scope in SCOPES] + [frozenset({scope}) for scope in SCOPES]
MATRIX_KEYS = ",".join([API_KEY, OTHER_API_KEY] + [config_line("k" + str(i), scoped_key(scopes), scopes)
                                                    for i, scopes in enumerate(SCOPED_KEYS)])


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# name -> headers, built when the test runs (tokens carry the current time)
CREDENTIALS = {
    "none": lambda: {},
    "garbage token": lambda: bearer("garbage.not.a-jwt"),
    "basic auth": lambda: {"Authorization": "Basic dXNlcjpwYXNz"},
    "expired token": lambda: bearer(make_token(uuid.uuid4(), exp_in=-60)),
    "token signed with another secret": lambda: bearer(make_token(uuid.uuid4(), secret="x" * 40)),
    "token with a non-UUID sub": lambda: bearer(make_token("not-a-uuid")),
    "user token": lambda: bearer(make_token(uuid.uuid4())),
    "API key": lambda: {"X-API-Key": API_KEY},
    "wrong API key": lambda: {"X-API-Key": "not-a-configured-key"},
    "API key as bearer": lambda: bearer(API_KEY),
}
# what each kind of endpoint answers to each credential (a missing entry: the credential is valid there)
EXPECTED = {
    USER: {name: INVALID_USER for name in CREDENTIALS if name != "user token"},
    STREAM: {name: INVALID_USER for name in CREDENTIALS if name != "user token"},
    SERVICE_ONLY: {name: INVALID_KEY for name in CREDENTIALS if name != "API key"},
}


def routes(app):
    """(method, rule) of every endpoint the app serves."""
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def concrete(rule, **values):
    """The rule with each <param> filled in (a fresh UUID unless given)."""
    def fill(match):
        name = match.group(1)
        return str(values.get(name, "missing.txt" if name == "filename" else uuid.uuid4()))
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", fill, rule)


def call(client, method, path, headers, **kwargs):
    if method in ("POST", "PUT", "PATCH") and "json" not in kwargs:
        kwargs["json"] = {}
    return client.open(path, method=method, headers=headers, **kwargs)


def fingerprint(db):
    """Every table's rows, to prove a refused call changed nothing (a partitioned table's through
    itself: its partitions are the owner's, read through it)."""
    with db.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace"
                    " WHERE s.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1")
        tables = [row[0] for row in cur.fetchall()]
        state = {}
        for table in tables:
            cur.execute(f'SELECT md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) FROM "{table}" t')
            state[table] = cur.fetchone()[0]
    return state


def assert_error(response, code, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["code"], body["status"]) == (code, status), body
    assert body["message"]


# ---------------------------------------------------------------- the table covers the app


def test_every_endpoint_is_classified(app):
    served = routes(app)
    unclassified = sorted(served - set(ACCESS))
    gone = sorted(set(ACCESS) - served)
    assert not unclassified, f"classify these in ACCESS (tests/security/test_access_control.py): {unclassified}"
    assert not gone, f"these are in ACCESS but the app no longer serves them: {gone}"


def test_every_service_endpoint_has_its_scope(app):
    """SCOPE has a row for every service endpoint, and it is the scope the view enforces."""
    service = {k for k, v in ACCESS.items() if v == SERVICE_ONLY}
    assert set(SCOPE) == service, f"give these a row in SCOPE: {sorted(service - set(SCOPE))}"
    for rule in app.url_map.iter_rules():
        view_class = getattr(app.view_functions[rule.endpoint], "view_class", None)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert scope_of(view_class) == SCOPE.get((method, rule.rule)), (method, rule.rule)


def test_every_path_parameter_is_classified(app):
    names = {name for rule in app.url_map.iter_rules() for name in rule.arguments}
    assert names <= set(PATH_OBJECTS), f"name the object of {sorted(names - set(PATH_OBJECTS))} in PATH_OBJECTS"


def test_openapi_documents_the_same_security(app, client):
    spec = client.get("/openapi.json").get_json()
    documented = {USER: [{"bearerAuth": []}], STREAM: [{"bearerAuth": []}],
                  SERVICE_ONLY: [{"apiKeyAuth": []}], OPEN: None}
    for (method, rule), kind in ACCESS.items():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)
        operation = spec["paths"].get(path, {}).get(method.lower())
        if operation is None:
            assert kind == OPEN, f"{method} {rule} is not in the OpenAPI document"
            continue
        assert operation.get("security") == documented[kind], (method, rule)


# ---------------------------------------------------------------- bad credentials, every endpoint


def used_ticket(client):
    """A stream ticket that was already redeemed once (refused for its customer after the
    redemption, so no stream stays open)."""
    headers = bearer(make_token(uuid.uuid4(), customers=[uuid.uuid4()]))
    ticket = client.post("/v1/notifications/sse/ticket", headers=headers).get_json()["ticket"]
    first = client.get(f"/v1/notifications/sse?ticket={ticket}&customer_id={uuid.uuid4()}")
    assert first.status_code == 403, first.get_data(as_text=True)
    return ticket


def wrong_identities(client, kind, method, rule):
    """(name, headers, query, expected refusal) of every wrong identity for this endpoint."""
    for credential, expected in sorted(EXPECTED[kind].items()):
        yield credential, CREDENTIALS[credential](), "", expected
    if kind == SERVICE_ONLY:
        scope = SCOPE[(method, rule)]
        yield ("API key without the scope", {"X-API-Key": scoped_key(frozenset(SCOPES) - {scope})}, "",
               INSUFFICIENT_SCOPE)
    if kind == STREAM:
        yield "reused stream ticket", {}, f"?ticket={used_ticket(client)}", INVALID_TICKET


@pytest.fixture
def matrix_client(make_app):
    """The app with a key for every scope but one, and one for each scope alone, besides the plain keys."""
    return make_app(API_KEYS=MATRIX_KEYS).test_client()


@pytest.mark.parametrize("method,rule", sorted(k for k, v in ACCESS.items() if v != OPEN))
def test_bad_credentials_are_refused_and_change_nothing(matrix_client, db, method, rule):
    """Each wrong identity, one request each; all mismatches reported at once. Then a key with
    only the endpoint's scope gets past authentication (SCOPE's row is enough)."""
    client, kind = matrix_client, ACCESS[(method, rule)]
    victim = insert_notification(db, uuid.uuid4())
    path = concrete(rule, notification_id=victim["id"])
    before = fingerprint(db)
    wrong = []
    for credential, headers, query, expected in wrong_identities(client, kind, method, rule):
        response = call(client, method, path + query, headers)
        body = response.get_json(silent=True) or {}
        got = (body.get("code"), response.status_code)
        if got != expected or body.get("status") != expected[1] or not body.get("message"):
            wrong.append(f"{credential}: expected {expected}, got {got} {response.get_data(as_text=True)[:200]}")
    assert not wrong, "\n".join(wrong)
    assert fingerprint(db) == before
    if kind == SERVICE_ONLY:
        response = call(client, method, path, {"X-API-Key": scoped_key(frozenset({SCOPE[(method, rule)]}))})
        assert response.status_code not in (401, 403), response.get_data(as_text=True)


@pytest.mark.parametrize("method,rule", sorted(k for k, v in ACCESS.items() if v == OPEN))
def test_open_endpoints_need_no_credentials(client, method, rule):
    for credential in ("none", "garbage token", "wrong API key"):
        response = call(client, method, concrete(rule), CREDENTIALS[credential]())
        assert response.status_code not in (401, 403), (credential, response.status_code)
        assert response.status_code < 500


def test_stream_ticket_that_is_unknown_is_refused(client):
    assert_error(client.get("/v1/notifications/sse?ticket=forged"), "notifications_m.invalid_ticket", 401)


def test_stream_ticket_is_single_use(client):
    """Redeeming a ticket consumes it; this stream is refused for its customer (403) after the
    ticket was taken, so nothing stays open, and the second use is an unknown ticket."""
    user_id = uuid.uuid4()
    headers = bearer(make_token(user_id, customers=[uuid.uuid4()]))
    ticket = client.post("/v1/notifications/sse/ticket", headers=headers).get_json()["ticket"]
    response = client.get(f"/v1/notifications/sse?ticket={ticket}&customer_id={uuid.uuid4()}")
    assert_error(response, "notifications_m.invalid_customer_id", 403)
    assert_error(client.get(f"/v1/notifications/sse?ticket={ticket}"), "notifications_m.invalid_ticket", 401)


# ---------------------------------------------------------------- another user's objects (BOLA)


def _notification_routes():
    """A user's routes to one notification (the evidence route is an audit key's, over every user)."""
    return sorted(k for k, kind in ACCESS.items() if "<notification_id>" in k[1] and kind == USER)


def _same_answer(foreign, missing):
    assert foreign.status_code == missing.status_code == 404, (foreign.status_code, missing.status_code)
    assert foreign.get_json() == missing.get_json()
    assert foreign.headers.get("Content-Type") == missing.headers.get("Content-Type")


def _add_delivery(db, notification):
    insert_delivery(db, notification["id"], attempts=1)


@pytest.mark.parametrize("method,rule", _notification_routes())
def test_another_users_notification_answers_exactly_as_a_missing_one(client, db, method, rule):
    owner, attacker = uuid.uuid4(), uuid.uuid4()
    victim = insert_notification(db, owner)
    _add_delivery(db, victim)
    before = fetch_row(db, victim["id"])
    headers = bearer(make_token(attacker))
    foreign = call(client, method, concrete(rule, notification_id=victim["id"]), headers)
    missing = call(client, method, concrete(rule, notification_id=uuid.uuid4()), headers)
    _same_answer(foreign, missing)
    assert fetch_row(db, victim["id"]) == before
    # the owner still has it, untouched
    own = client.get(f"/v1/notifications/{victim['id']}", headers=bearer(make_token(owner)))
    assert own.status_code == 200 and own.get_json()["read"] is False


@pytest.mark.parametrize("method,rule", _notification_routes())
def test_a_notification_of_a_customer_outside_the_token_answers_as_missing(client, db, method, rule):
    """A token limited to some customers does not see the user's notifications of others, by id
    either: the same answer as for a missing id, and nothing changes."""
    user_id, mine, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    hidden = insert_notification(db, user_id, customer_id=theirs)
    before = fetch_row(db, hidden["id"])
    headers = bearer(make_token(user_id, customers=[mine]))
    foreign = call(client, method, concrete(rule, notification_id=hidden["id"]), headers)
    missing = call(client, method, concrete(rule, notification_id=uuid.uuid4()), headers)
    _same_answer(foreign, missing)
    assert fetch_row(db, hidden["id"]) == before
    # visible to a token for that customer, and to one without the claim
    for token in (make_token(user_id, customers=[theirs]), make_token(user_id)):
        assert client.get(f"/v1/notifications/{hidden['id']}", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("method,rule", _notification_routes())
def test_a_notification_of_no_customer_is_visible_to_a_limited_token(client, db, method, rule):
    user_id = uuid.uuid4()
    own = insert_notification(db, user_id, customer_id=None)
    response = call(client, method, concrete(rule, notification_id=own["id"]),
                    bearer(make_token(user_id, customers=[uuid.uuid4()])))
    # (found: acknowledging it is a 409 only because it needs no acknowledgement)
    assert response.status_code in ((409,) if rule.endswith("/ack") else (200, 204)), response.get_data(as_text=True)


def test_a_deleted_notification_answers_as_missing(client, db, user):
    user_id, headers = user
    gone = insert_notification(db, user_id)
    assert client.delete(f"/v1/notifications/{gone['id']}", headers=headers).status_code == 204
    for method, rule in _notification_routes():
        foreign = call(client, method, concrete(rule, notification_id=gone["id"]), headers)
        missing = call(client, method, concrete(rule, notification_id=uuid.uuid4()), headers)
        _same_answer(foreign, missing)


def test_another_keys_trigger_answers_exactly_as_a_missing_one(client):
    body = {"type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(uuid.uuid4())]}
    accepted = client.post("/v1/notifications/trigger", json=body, headers=SERVICE)
    assert accepted.status_code == 202
    trigger_id = accepted.get_json()["trigger_id"]
    for method, rule in sorted(k for k in ACCESS if "<trigger_id>" in k[1]):
        other = {"X-API-Key": OTHER_API_KEY}
        foreign = call(client, method, concrete(rule, trigger_id=trigger_id), other)
        missing = call(client, method, concrete(rule, trigger_id=uuid.uuid4()), other)
        _same_answer(foreign, missing)
        # its owner finds it (DELETE: 409, it was never scheduled, so it cannot be cancelled)
        assert call(client, method, concrete(rule, trigger_id=trigger_id), SERVICE).status_code == \
            (409 if method == "DELETE" else 200)


def test_a_user_cannot_read_or_set_a_contact_even_their_own(client, db):
    user_id = uuid.uuid4()
    path = f"/v1/notifications/users/{user_id}/contact"
    assert client.put(path, json={"email": "jane@example.com"}, headers=SERVICE).status_code == 200
    headers = bearer(make_token(user_id))
    for method in ("GET", "PUT", "DELETE"):
        assert_error(call(client, method, path, headers, json={"email": "evil@example.com"}
                          if method == "PUT" else None), *INVALID_KEY)
    assert client.get(path, headers=SERVICE).get_json()["email"] == "jane@example.com"


# ---------------------------------------------------------------- foreign customers (403)


def _user_operations_with_customer_query(spec):
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters" or operation.get("security") != [{"bearerAuth": []}]:
                continue
            if any(p["in"] == "query" and p["name"] == "customer_id" for p in operation.get("parameters", [])):
                yield method.upper(), path


def _body_schema(spec, operation):
    content = (operation.get("requestBody") or {}).get("content", {}).get("application/json", {})
    schema = content.get("schema", {})
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_customer_outside_the_token_is_403_on_every_user_query(client):
    spec = client.get("/openapi.json").get_json()
    found = list(_user_operations_with_customer_query(spec))
    assert ("GET", "/v1/notifications") in found and ("GET", "/v1/notifications/sse") in found
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    headers = bearer(make_token(uuid.uuid4(), customers=[mine]))
    for method, path in found:
        body = {"changes": [{"group": "chat", "enabled": True}]} if path.endswith("/preferences") else {}
        response = call(client, method, f"{path}?customer_id={theirs}", headers,
                        **({"json": body} if method in ("POST", "PUT", "PATCH") else {}))
        assert_error(response, "notifications_m.invalid_customer_id", 403)
        # the token's own customer is fine (the stream is not opened here)
        if path != "/v1/notifications/sse":
            ok = call(client, method, f"{path}?customer_id={mine}", headers,
                      **({"json": body} if method in ("POST", "PUT", "PATCH") else {}))
            assert ok.status_code == 200, (method, path, ok.get_data(as_text=True))


def test_customer_outside_the_token_is_403_in_every_user_body(client, db):
    spec = client.get("/openapi.json").get_json()
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    user_id = uuid.uuid4()
    headers = bearer(make_token(user_id, customers=[mine]))
    checked = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters" or operation.get("security") != [{"bearerAuth": []}]:
                continue
            if "customer_id" in _body_schema(spec, operation).get("properties", {}):
                before = fingerprint(db)
                response = call(client, method.upper(), path, headers, json={"customer_id": str(theirs)})
                assert_error(response, "notifications_m.invalid_customer_id", 403)
                assert fingerprint(db) == before
                checked.append((method.upper(), path))
    assert ("POST", "/v1/notifications/read-all") in checked
    # nested: a preference change for another customer
    before = fingerprint(db)
    response = client.put("/v1/notifications/preferences", headers=headers, json={
        "changes": [{"group": "chat", "enabled": False, "customer_id": str(theirs)}]})
    assert_error(response, "notifications_m.invalid_customer_id", 403)
    assert fingerprint(db) == before


def test_read_all_with_a_limited_token_leaves_other_customers_unread(client, db):
    user_id, mine, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    seen = insert_notification(db, user_id, customer_id=mine)
    hidden = insert_notification(db, user_id, customer_id=theirs)
    headers = bearer(make_token(user_id, customers=[mine]))
    assert client.post("/v1/notifications/read-all", json={}, headers=headers).get_json()["updated"] == 1
    assert fetch_row(db, seen["id"])["read_at"] is not None
    assert fetch_row(db, hidden["id"])["read_at"] is None


def _chat_in_app(client, user_id, customer_id):
    """Whether chat.message_received reaches the in-app channel for that customer (full token)."""
    body = client.get(f"/v1/notifications/preferences?customer_id={customer_id}",
                      headers=bearer(make_token(user_id))).get_json()
    group = next(g for g in body["groups"] if g["group"] == "chat")
    return next(e for e in group["events"] if e["event"] == "message_received")["channels"]["system"]["enabled"]


def test_a_limited_token_changes_preferences_of_its_customers_only(client, db):
    """A change without `customer_id` ("all customers") from a token limited to customer A
    applies to A (each listed customer), not to B, which the token cannot see."""
    user_id, mine, theirs = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    headers = bearer(make_token(user_id, customers=[mine]))
    response = client.put("/v1/notifications/preferences", headers=headers,
                          json={"changes": [{"group": "chat", "enabled": False}]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _chat_in_app(client, user_id, mine) is False
    assert _chat_in_app(client, user_id, theirs) is True
    with db.cursor() as cur:
        cur.execute("SELECT customer_id FROM preferences WHERE user_id = %s", (user_id,))
        assert [str(row[0]) for row in cur.fetchall()] == [str(mine)]


def test_a_limited_token_cannot_set_quiet_hours_that_hold_every_customer(client, db):
    user_id = uuid.uuid4()
    quiet = {"quiet_hours": {"start": "22:00", "end": "07:00"}}
    before = fingerprint(db)
    response = client.put("/v1/notifications/preferences", json=quiet,
                          headers=bearer(make_token(user_id, customers=[uuid.uuid4()])))
    assert_error(response, "notifications_m.invalid_customer_id", 403)
    assert fingerprint(db) == before
    response = client.put("/v1/notifications/preferences", json=quiet, headers=bearer(make_token(user_id)))
    assert response.status_code == 200 and response.get_json()["quiet_hours"]["start"] == "22:00"


# ---------------------------------------------------------------- mass assignment (API3)


@pytest.mark.parametrize("method,path_rule,body", [
    ("PATCH", "/v1/notifications/<notification_id>/read", {"read": True, "user_id": "OTHER"}),
    ("PATCH", "/v1/notifications/<notification_id>/read", {"read": True, "customer_id": "OTHER"}),
    ("PATCH", "/v1/notifications/<notification_id>/read", {"read_at": "2020-01-01T00:00:00Z"}),
    ("POST", "/v1/notifications/read-all", {"user_id": "OTHER"}),
])
def test_fields_a_client_may_not_set_are_refused(client, db, user, method, path_rule, body):
    user_id, headers = user
    own = insert_notification(db, user_id)
    body = {k: (str(uuid.uuid4()) if v == "OTHER" else v) for k, v in body.items()}
    before = fingerprint(db)
    response = call(client, method, concrete(path_rule, notification_id=own["id"]), headers, json=body)
    assert_error(response, "notifications_m.invalid_request", 422)
    assert fingerprint(db) == before


def test_a_trigger_cannot_choose_its_id_or_owner(client, db):
    body = {"type": "chat", "event": "message_received", "title": "Hi", "user_ids": [str(uuid.uuid4())],
            "id": str(uuid.uuid4()), "api_key_id": "someone-else"}
    assert_error(client.post("/v1/notifications/trigger", json=body, headers=SERVICE),
                 "notifications_m.invalid_request", 422)
    with db.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute("SELECT count(*) AS n FROM triggers")
        assert cur.fetchone()["n"] == 0
