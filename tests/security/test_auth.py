"""Who may call: user bearer tokens (HS256, RS256, aud/iss) and service API keys."""
import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testkit.identity import API_KEY, JWT_SECRET, make_token, OTHER_API_KEY, SERVICE
from testkit.rows import insert_notification

INVALID_USER = {"code": "notifications_m.invalid_user_id", "message": "Invalid or missing authenticated user ID",
                "status": 401}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned_token(payload, header):
    """A token built by hand: `alg: none` and friends that PyJWT would not produce."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}."


def hmac_token(payload, secret):
    """HS256 by hand, with any bytes as the secret (PyJWT refuses a PEM as HMAC key)."""
    signing_input = (f"{b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}."
                     f"{b64url(json.dumps(payload).encode())}")
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def future():
    return int(time.time()) + 300




@pytest.fixture(scope="module")
def rsa_keys():
    """(private key, public PEM) of a fresh RSA key pair."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public_pem


def rs256(private, user_id, **claims):
    payload = {"sub": str(user_id), "exp": future(), **claims}
    return jwt.encode(payload, private, algorithm="RS256")


# ---------------------------------------------------------------- user tokens


def bad_user_headers():
    user_id = str(uuid.uuid4())
    return {
        "no header": {},
        "garbage token": bearer("not.a.jwt"),
        "random string": bearer("abcdef"),
        "bearer with empty token": {"Authorization": "Bearer "},
        "bearer alone": {"Authorization": "Bearer"},
        "token without scheme": {"Authorization": make_token(user_id)},
        "basic scheme": {"Authorization": "Basic " + b64url(b"user:pass")},
        "expired": bearer(make_token(user_id, exp_in=-60)),
        "wrong signature": bearer(make_token(user_id, secret="another-secret-that-is-long-enough-123")),
        "tampered payload": bearer(_tamper(make_token(user_id))),
        "no exp": bearer(make_token(user_id, exp_in=None)),
        "exp not a number": bearer(make_token(user_id, exp_in=None, exp="tomorrow")),
        "non-UUID sub": bearer(make_token("user-42")),
        "numeric sub": bearer(jwt.encode({"sub": "12345", "exp": future()}, JWT_SECRET, algorithm="HS256")),
        "no sub": bearer(jwt.encode({"exp": future()}, JWT_SECRET, algorithm="HS256")),
        "not yet valid": bearer(make_token(user_id, nbf=future())),
        "alg none": bearer(unsigned_token({"sub": user_id, "exp": future()}, {"alg": "none", "typ": "JWT"})),
        "alg None": bearer(unsigned_token({"sub": user_id, "exp": future()}, {"alg": "None", "typ": "JWT"})),
        "alg HS512 not configured": bearer(jwt.encode({"sub": user_id, "exp": future()}, JWT_SECRET * 2,
                                                      algorithm="HS512")),
        "customers not a list": bearer(jwt.encode({"sub": user_id, "exp": future(), "customers": str(uuid.uuid4())},
                                                  JWT_SECRET, algorithm="HS256")),
        "customers not UUIDs": bearer(make_token(user_id, customers=["acme"])),
        "API key in X-API-Key": SERVICE,
        "API key as bearer": bearer(API_KEY),
    }


def _tamper(token):
    """Swap the payload for another user's, keeping the original signature."""
    header, _, signature = token.split(".")
    payload = b64url(json.dumps({"sub": str(uuid.uuid4()), "exp": future()}).encode())
    return f"{header}.{payload}.{signature}"


@pytest.mark.parametrize("case", list(bad_user_headers()))
def test_bad_credentials_are_401_invalid_user_id(client, db, case):
    headers = bad_user_headers()[case]
    r = client.get("/v1/notifications", headers=headers)
    assert r.status_code == 401, (case, r.get_data(as_text=True))
    assert r.get_json() == INVALID_USER


@pytest.mark.parametrize("method, path", [
    ("get", "/v1/notifications/{id}"),
    ("patch", "/v1/notifications/{id}/read"),
    ("delete", "/v1/notifications/{id}"),
])
def test_every_user_route_refuses_a_bad_token_and_changes_nothing(client, db, method, path):
    owner = uuid.uuid4()
    row = insert_notification(db, owner)
    for headers in ({}, bearer(make_token(owner, exp_in=-60)), bearer(make_token(owner, exp_in=None)),
                    SERVICE):
        r = getattr(client, method)(path.format(id=row["id"]), headers=headers)
        assert r.status_code == 401 and r.get_json() == INVALID_USER
    with db.cursor() as cur:
        cur.execute("SELECT read_at, deleted_at FROM notifications WHERE id = %s", (row["id"],))
        assert cur.fetchone() == (None, None)


def test_auth_is_checked_before_the_input(client):
    r = client.get("/v1/notifications?limit=0")
    assert r.status_code == 401 and r.get_json() == INVALID_USER
    r = client.get("/v1/notifications/not-a-uuid")
    assert r.status_code == 401 and r.get_json() == INVALID_USER


def test_valid_token_variants_are_accepted(client, db):
    user_id = uuid.uuid4()
    row = insert_notification(db, user_id)
    for headers in (bearer(make_token(user_id)),
                    {"Authorization": f"bearer {make_token(user_id)}"},
                    # an unconfigured audience does not make real IdP tokens (which carry `aud`) fail
                    bearer(make_token(user_id, aud="some-api", iss="https://idp.example"))):
        r = client.get("/v1/notifications", headers=headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        assert [item["id"] for item in r.get_json()["items"]] == [str(row["id"])]


def test_open_routes_need_no_token(client):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


# ---------------------------------------------------------------- RS256


def test_rs256_token_is_accepted(make_app, db, rsa_keys):
    private, public_pem = rsa_keys
    application = make_app(JWT_SECRET="", JWT_PUBLIC_KEY=public_pem)
    client = application.test_client()
    user_id = uuid.uuid4()
    row = insert_notification(db, user_id)
    r = client.get("/v1/notifications", headers=bearer(rs256(private, user_id)))
    assert r.status_code == 200, r.get_data(as_text=True)
    assert [item["id"] for item in r.get_json()["items"]] == [str(row["id"])]
    r = client.get(f"/v1/notifications/{row['id']}", headers=bearer(rs256(private, user_id)))
    assert r.status_code == 200 and r.get_json()["id"] == str(row["id"])


def test_rs256_public_key_from_a_file(make_app, db, rsa_keys, tmp_path):
    private, public_pem = rsa_keys
    key_file = tmp_path / "jwt.pub"
    key_file.write_text(public_pem)
    client = make_app(JWT_SECRET="", JWT_PUBLIC_KEY=str(key_file)).test_client()
    assert client.get("/v1/notifications", headers=bearer(rs256(private, uuid.uuid4()))).status_code == 200


@pytest.mark.parametrize("with_secret", [False, True], ids=["rs256-only", "rs256-and-hs256"])
def test_hs256_forged_with_the_public_key_is_refused(make_app, rsa_keys, with_secret):
    """The classic algorithm-confusion attack: the public key is public."""
    private, public_pem = rsa_keys
    overrides = {"JWT_PUBLIC_KEY": public_pem}
    if not with_secret:
        overrides["JWT_SECRET"] = ""
    client = make_app(**overrides).test_client()
    user_id = uuid.uuid4()
    forged = hmac_token({"sub": str(user_id), "exp": future()}, public_pem.encode())
    r = client.get("/v1/notifications", headers=bearer(forged))
    assert r.status_code == 401 and r.get_json() == INVALID_USER
    # the same app does accept the genuine RS256 token, so the refusal is the forgery's
    assert client.get("/v1/notifications", headers=bearer(rs256(private, user_id))).status_code == 200


def test_rs256_signed_by_another_key_is_refused(make_app, rsa_keys):
    _, public_pem = rsa_keys
    client = make_app(JWT_SECRET="", JWT_PUBLIC_KEY=public_pem).test_client()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (rs256(other, uuid.uuid4()), rs256(other, uuid.uuid4(), exp=int(time.time()) - 10),
                  make_token(uuid.uuid4())):   # HS256 when only RS256 is configured
        r = client.get("/v1/notifications", headers=bearer(token))
        assert r.status_code == 401 and r.get_json() == INVALID_USER


def test_rs256_expired_and_no_exp_are_refused(make_app, rsa_keys):
    private, public_pem = rsa_keys
    client = make_app(JWT_SECRET="", JWT_PUBLIC_KEY=public_pem).test_client()
    expired = rs256(private, uuid.uuid4(), exp=int(time.time()) - 60)   # past the 30 s leeway
    no_exp = jwt.encode({"sub": str(uuid.uuid4())}, private, algorithm="RS256")
    for token in (expired, no_exp):
        assert client.get("/v1/notifications", headers=bearer(token)).get_json() == INVALID_USER


# ---------------------------------------------------------------- audience and issuer


def test_audience_and_issuer_checked_when_configured(make_app):
    client = make_app(JWT_AUDIENCE="notifications", JWT_ISSUER="https://idp.example").test_client()
    user_id = uuid.uuid4()
    good = {"aud": "notifications", "iss": "https://idp.example"}
    r = client.get("/v1/notifications", headers=bearer(make_token(user_id, **good)))
    assert r.status_code == 200, r.get_data(as_text=True)
    r = client.get("/v1/notifications", headers=bearer(make_token(user_id, aud=["other", "notifications"],
                                                                  iss="https://idp.example")))
    assert r.status_code == 200
    for claims in ({"aud": "other", "iss": "https://idp.example"},
                   {"iss": "https://idp.example"},
                   {"aud": "notifications", "iss": "https://evil.example"},
                   {"aud": "notifications"}):
        r = client.get("/v1/notifications", headers=bearer(make_token(user_id, **claims)))
        assert r.status_code == 401 and r.get_json() == INVALID_USER, claims


def test_audience_only(make_app):
    client = make_app(JWT_AUDIENCE="notifications").test_client()
    user_id = uuid.uuid4()
    assert client.get("/v1/notifications", headers=bearer(make_token(user_id, aud="notifications"))
                      ).status_code == 200
    assert client.get("/v1/notifications", headers=bearer(make_token(user_id))).status_code == 401
    assert client.get("/v1/notifications", headers=bearer(make_token(user_id, aud="x"))).status_code == 401


# ---------------------------------------------------------------- service keys


@pytest.fixture
def service_client(make_app):
    """A test app with one service-only route (the real ones come with dispatch)."""
    from app.security.auth import current_service, service_required
    application = make_app()

    @application.get("/_test/service")
    @service_required("trigger")
    def whoami():
        return {"service": current_service()}

    return application.test_client()


INVALID_KEY = {"code": "notifications_m.invalid_api_key", "message": "Invalid or missing API key", "status": 401}


@pytest.mark.parametrize("headers", [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": "wrong"},
    {"X-API-Key": API_KEY + "x"},
    {"X-API-Key": API_KEY[:-1]},
    {"X-API-Key": f"{API_KEY},{OTHER_API_KEY}"},
    {"Authorization": f"Bearer {API_KEY}"},
    {"Authorization": f"Bearer {make_token(uuid.uuid4())}"},
], ids=["none", "empty", "wrong", "longer", "prefix", "both-joined", "key-as-bearer", "user-token"])
def test_bad_api_key_is_401_invalid_api_key(service_client, headers):
    r = service_client.get("/_test/service", headers=headers)
    assert r.status_code == 401 and r.get_json() == INVALID_KEY


def test_each_configured_key_is_accepted_with_its_own_id(service_client):
    first = service_client.get("/_test/service", headers={"X-API-Key": API_KEY})
    second = service_client.get("/_test/service", headers={"X-API-Key": OTHER_API_KEY})
    assert first.status_code == 200 and second.status_code == 200
    first_id, second_id = first.get_json()["service"], second.get_json()["service"]
    assert first_id != second_id
    assert API_KEY not in first_id and OTHER_API_KEY not in second_id
    # stable across requests
    assert service_client.get("/_test/service", headers=SERVICE).get_json()["service"] == first_id


# ---------------------------------------------------------------- clock leeway and lifetime (Issue 16 point 8)


@pytest.mark.parametrize("claims", [
    {"iat": lambda now: now + 20},                          # the identity provider's clock 20 s ahead
    {"nbf": lambda now: now + 20},
    {"exp": lambda now: now - 20},                          # expired 20 s ago: within the leeway
], ids=["iat-ahead", "nbf-ahead", "just-expired"])
def test_clock_skew_within_30_seconds_is_accepted(client, claims):
    now = int(time.time())
    token = make_token(uuid.uuid4(), **{k: f(now) for k, f in claims.items()})
    r = client.get("/v1/notifications", headers=bearer(token))
    assert r.status_code == 200, r.get_data(as_text=True)


@pytest.mark.parametrize("claims", [
    {"nbf": lambda now: now + 60},
    {"exp": lambda now: now - 60},
    {"exp": lambda now: 2 ** 62},                           # lives for ever
    {"exp": lambda now: now + 86400 + 120},                 # a day and two minutes from now, no iat
    {"iat": lambda now: now - 3600, "exp": lambda now: now + 86400},   # 25 hours from its iat
], ids=["nbf-beyond-leeway", "expired-beyond-leeway", "exp-2^62", "lifetime-from-now", "lifetime-from-iat"])
def test_tokens_beyond_the_leeway_or_the_lifetime_cap_are_401(client, claims):
    now = int(time.time())
    token = make_token(uuid.uuid4(), **{k: f(now) for k, f in claims.items()})
    r = client.get("/v1/notifications", headers=bearer(token))
    assert r.status_code == 401 and r.get_json() == INVALID_USER


def test_lifetime_cap_is_configurable(make_app):
    client = make_app(JWT_MAX_LIFETIME_SECONDS="600").test_client()
    now = int(time.time())
    assert client.get("/v1/notifications", headers=bearer(make_token(uuid.uuid4(), iat=now, exp=now + 600))
                      ).status_code == 200
    assert client.get("/v1/notifications", headers=bearer(make_token(uuid.uuid4(), iat=now, exp=now + 601))
                      ).get_json() == INVALID_USER
