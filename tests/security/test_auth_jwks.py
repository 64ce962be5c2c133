"""Keys of an identity provider (JWKS by `kid`) and HS256 secret rotation, over HTTP.

The identity provider is a real HTTP server on a local port serving a JWKS document the
test changes (rotation) or stops (outage); it counts the requests it answers.
"""
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.config import load_settings
from app.errors import ConfigError
from testkit.identity import JWT_SECRET, make_token
from testkit.processes import wait_until
from testkit.rows import insert_notification
from devtools.services import REPO_ROOT

AUDIENCE = "notifications"
ISSUER = "https://idp.example/realms/bank"


class SigningKey:
    """A private key and the public JWK an IdP would publish for it."""

    def __init__(self, kid, kind="RSA"):
        self.kid = kid
        if kind == "RSA":
            self.private, self.alg = rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private, self.alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = dict(jwk, kid=kid, use="sig")   # no `alg`: like Azure AD, the algorithm follows the key

    def token(self, user_id, exp_in=300, kid=None, **claims):
        payload = {"sub": str(user_id), "exp": int(time.time()) + exp_in, "aud": AUDIENCE, "iss": ISSUER, **claims}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": kid or self.kid})


class IdentityProvider:
    """A JWKS endpoint on 127.0.0.1: `publish(keys)`, `requests` answered, `stop()` for an
    outage, `hold()` to accept a request and never answer it."""

    def __init__(self):
        self.document = {"keys": []}
        self.requests = 0
        self.held = threading.Event()
        self.holding = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                provider.requests += 1
                if provider.holding:
                    provider.held.wait(60)
                    return
                body = json.dumps(provider.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/bank/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, *keys):
        self.document = {"keys": [key.jwk for key in keys]}

    def hold(self):
        self.holding = True

    def stop(self):
        if self.thread.is_alive():
            self.held.set()
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def idp():
    provider = IdentityProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def keys():
    return {"A": SigningKey("key-a"), "B": SigningKey("key-b"), "EC": SigningKey("key-ec", "EC"),
            "stranger": SigningKey("key-a")}   # same kid as A, another key


def jwks_app(make_app, idp, **overrides):
    settings = dict(JWT_SECRET="", JWT_JWKS_URL=idp.url, JWT_AUDIENCE=AUDIENCE, JWT_ISSUER=ISSUER)
    return make_app(**dict(settings, **overrides))


def status(client, token):
    return client.get("/v1/notifications", headers={"Authorization": f"Bearer {token}"}).status_code


def advance_clock(application, seconds):
    """The key cache's clock, moved forward: its one-minute and five-minute rules without waiting."""
    keys = application.config["JWT_JWKS"]
    real, offset = time.monotonic, keys._clock() - time.monotonic() + seconds
    keys._clock = lambda: real() + offset


def test_a_token_signed_by_the_published_key_is_accepted(make_app, idp, keys, db):
    idp.publish(keys["A"])
    client = jwks_app(make_app, idp).test_client()
    user_id = uuid.uuid4()
    row = insert_notification(db, user_id)
    r = client.get("/v1/notifications", headers={"Authorization": f"Bearer {keys['A'].token(user_id)}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert [item["id"] for item in r.get_json()["items"]] == [str(row["id"])]
    assert idp.requests == 1
    for _ in range(5):
        assert status(client, keys["A"].token(user_id)) == 200
    assert idp.requests == 1   # cached


def test_audience_issuer_and_signature_are_checked(make_app, idp, keys):
    idp.publish(keys["A"])
    client = jwks_app(make_app, idp).test_client()
    user_id = uuid.uuid4()
    r = client.get("/v1/notifications", headers={"Authorization": f"Bearer {keys['A'].token(user_id, aud='x')}"})
    assert r.status_code == 401 and r.get_json()["code"] == "notifications_m.invalid_user_id"
    assert status(client, keys["A"].token(user_id, iss="https://other.example")) == 401
    assert status(client, keys["stranger"].token(user_id)) == 401      # kid A, signed by another key
    assert status(client, keys["A"].token(user_id, exp_in=-120)) == 401
    assert status(client, make_token(user_id)) == 401                  # HS256: no secret configured
    assert status(client, keys["A"].token(user_id)) == 200


def test_rotation_new_key_at_once_old_key_until_the_set_is_refreshed(make_app, idp, keys):
    """The rule: a key is accepted while it is in the cached set. An IdP rotating keeps the
    old key published while its tokens live; withdrawing it revokes it at the next refresh."""
    idp.publish(keys["A"])
    application = jwks_app(make_app, idp)
    client = application.test_client()
    user_id = uuid.uuid4()
    old_token = keys["A"].token(user_id, exp_in=600)
    assert status(client, old_token) == 200
    idp.publish(keys["A"], keys["B"])
    assert status(client, keys["B"].token(user_id)) == 200      # unknown kid: refreshed at once
    idp.publish(keys["B"])                                       # A withdrawn
    assert status(client, old_token) == 200                      # A cached: its tokens still work
    assert status(client, keys["B"].token(user_id)) == 200
    assert idp.requests == 2
    advance_clock(application, 301)                              # the set is five minutes old
    assert status(client, keys["B"].token(user_id)) == 200
    assert idp.requests == 3
    assert status(client, old_token) == 401                      # A is gone from the set: revoked


def test_an_unknown_kid_is_401_and_refreshes_at_most_once_a_minute(make_app, idp, keys):
    idp.publish(keys["A"])
    application = jwks_app(make_app, idp)
    client = application.test_client()
    user_id = uuid.uuid4()
    assert status(client, keys["A"].token(user_id)) == 200
    unknown = SigningKey("key-unknown")
    assert status(client, unknown.token(user_id)) == 401
    assert idp.requests == 2
    flood = [SigningKey(f"random-{n}") for n in range(3)]
    for n in range(300):
        assert status(client, flood[n % 3].token(user_id, kid=uuid.uuid4().hex)) == 401
    assert idp.requests == 2, "a flood of random kids reached the identity provider"
    assert status(client, keys["A"].token(user_id)) == 200
    idp.publish(keys["A"], keys["B"])       # B published inside the minute: waits for it
    assert status(client, keys["B"].token(user_id)) == 401
    advance_clock(application, 61)
    assert status(client, keys["B"].token(user_id)) == 200
    assert idp.requests == 3


def test_idp_down_cached_keys_work_unknown_kids_are_401(make_app, idp, keys):
    idp.publish(keys["A"])
    application = jwks_app(make_app, idp)
    client = application.test_client()
    user_id = uuid.uuid4()
    assert status(client, keys["A"].token(user_id)) == 200
    idp.publish(keys["A"], keys["B"])
    idp.stop()
    assert status(client, keys["A"].token(user_id)) == 200
    r = client.get("/v1/notifications", headers={"Authorization": f"Bearer {keys['B'].token(user_id)}"})
    assert r.status_code == 401 and r.get_json()["code"] == "notifications_m.invalid_user_id"
    advance_clock(application, 400)          # past the lifespan and the minute: refreshes fail
    assert status(client, keys["A"].token(user_id)) == 200
    assert status(client, keys["B"].token(user_id)) == 401


def test_idp_down_at_start_is_401_not_500(make_app, idp, keys):
    idp.publish(keys["A"])
    idp.stop()
    client = jwks_app(make_app, idp).test_client()
    r = client.get("/v1/notifications", headers={"Authorization": f"Bearer {keys['A'].token(uuid.uuid4())}"})
    assert r.status_code == 401 and r.get_json()["code"] == "notifications_m.invalid_user_id"


def test_es256_keys_work_and_an_algorithm_must_match_its_key(make_app, idp, keys):
    idp.publish(keys["A"], keys["EC"])
    client = jwks_app(make_app, idp).test_client()
    user_id = uuid.uuid4()
    assert status(client, keys["EC"].token(user_id)) == 200
    assert status(client, keys["A"].token(user_id)) == 200
    assert status(client, keys["A"].token(user_id, kid="key-ec")) == 401   # RS256 under the EC key's kid
    hs = jwt.encode({"sub": str(user_id), "exp": int(time.time()) + 60, "aud": AUDIENCE, "iss": ISSUER},
                    "x" * 32, algorithm="HS256", headers={"kid": "key-a"})
    assert status(client, hs) == 401


@pytest.mark.slow
def test_a_gevent_worker_keeps_serving_while_the_idp_hangs(processes, clean, idp, keys):  # noqa: F811
    """The fetch has a timeout and yields to other requests: a hung IdP costs the request that
    needed it a 401 after the timeout, never a 500, and the worker's other requests go on."""
    idp.publish(keys["A"])
    web = processes.start_web(clean, JWT_JWKS_URL=idp.url, JWT_AUDIENCE=AUDIENCE, JWT_ISSUER=ISSUER)
    user_id = uuid.uuid4()
    headers = {"Authorization": f"Bearer {keys['A'].token(user_id)}"}
    assert web.get("/v1/notifications", headers=headers).status_code == 200
    idp.hold()
    finished = []

    def unknown_kid():
        r = web.get("/v1/notifications", headers={"Authorization": f"Bearer {keys['B'].token(user_id)}"},
                    timeout=30)
        finished.append(r)

    thread = threading.Thread(target=unknown_kid)
    thread.start()
    wait_until(lambda: idp.requests == 2, message="the refresh reached the IdP")
    assert web.get("/v1/notifications", headers=headers).status_code == 200
    assert finished == [], "the cached key's request waited for the hung IdP"
    thread.join(30)
    assert [r.status_code for r in finished] == [401]
    assert finished[0].json()["code"] == "notifications_m.invalid_user_id"


# ---------------------------------------------------------------- HS256 secret rotation

NEW_SECRET = "new-secret-that-is-long-enough-for-hs256-x"
OLD_SECRETS = ("old-secret-that-is-long-enough-for-hs256-1", "old-secret-that-is-long-enough-for-hs256-2")


def test_previous_hs256_secrets_are_accepted_others_refused(make_app):
    client = make_app(JWT_SECRET=NEW_SECRET, JWT_SECRET_PREVIOUS=",".join(OLD_SECRETS)).test_client()
    user_id = uuid.uuid4()
    for secret in (NEW_SECRET, *OLD_SECRETS):
        assert status(client, make_token(user_id, secret=secret)) == 200, secret
    assert status(client, make_token(user_id, secret=JWT_SECRET)) == 401
    assert status(client, make_token(user_id, secret=OLD_SECRETS[0], exp_in=-120)) == 401
    without = make_app(JWT_SECRET=NEW_SECRET).test_client()
    assert status(without, make_token(user_id, secret=OLD_SECRETS[0])) == 401


# ---------------------------------------------------------------- start-up checks

REPO = str(REPO_ROOT)
PRODUCTION = {"DEVELOPMENT": "false", "SECRET_KEY": "p" * 48, "API_KEYS": "k" * 43, "AUDIT_HMAC_KEY": "prod:" + "a" * 48,
              "NOTIFICATIONS_CONFIG": os.path.join(REPO, "notifications.yaml"),
              "QUEUE_CONFIG": os.path.join(REPO, "queue.yaml")}
IDP = {"JWT_JWKS_URL": "https://idp.example/realms/bank/protocol/openid-connect/certs", "JWT_AUDIENCE": AUDIENCE}


def test_a_production_jwks_deploy_starts_with_rs256_and_es256():
    settings = load_settings(environ=dict(PRODUCTION, **IDP))
    assert settings["JWT_ALGORITHMS"] == ["RS256", "ES256"]
    assert settings["JWT_JWKS"].url == IDP["JWT_JWKS_URL"]


@pytest.mark.parametrize("bad, key", [
    ({"JWT_JWKS_URL": "http://idp.example/certs"}, "JWT_JWKS_URL"),       # a key server anyone on the path can be
    ({"JWT_JWKS_URL": "file:///etc/keys.json"}, "JWT_JWKS_URL"),
    ({"JWT_JWKS_URL": "idp.example/certs"}, "JWT_JWKS_URL"),
    ({"JWT_AUDIENCE": ""}, "JWT_AUDIENCE"),                               # the IdP signs for other apps too
    ({"JWT_SECRET": "s" * 48, "JWT_SECRET_PREVIOUS": "x" * 31}, "JWT_SECRET_PREVIOUS"),
    ({"JWT_SECRET": "s" * 48, "JWT_SECRET_PREVIOUS": f"{'o' * 40},{JWT_SECRET}"}, "JWT_SECRET_PREVIOUS"),
    ({"JWT_SECRET_PREVIOUS": "o" * 40}, "JWT_SECRET_PREVIOUS"),           # previous without a current one
], ids=["http", "file", "no-scheme", "no-audience", "short-previous", "dev-previous", "previous-alone"])
def test_bad_identity_settings_are_refused_outside_development(bad, key):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=dict(PRODUCTION, **dict(IDP, **bad)))
    assert caught.value.key == key


def test_development_may_use_an_http_idp_without_audience():
    settings = load_settings(environ=dict(PRODUCTION, DEVELOPMENT="true", JWT_JWKS_URL="http://127.0.0.1:1/certs"))
    assert settings["JWT_JWKS"] is not None
