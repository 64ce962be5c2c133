"""A local push service (RFC 8030) for the Web Push tests, over real HTTPS, and the browser's half.

`PushService` listens on 127.0.0.1 with a certificate for `push.test.example` (the service reaches
it through WEBPUSH_RESOLVE and trusts it through WEBPUSH_CA_FILE: `settings()`). For every POST it
checks what a real push service checks: `Authorization: vapid t=<JWT>, k=<key>` with an ES256 JWT
signed by that key whose `aud` is our origin, `exp` in the next 24 hours and `sub` a mailto:/https:
URL; `Content-Encoding: aes128gcm` and a `TTL`. It then decrypts the body with the subscription's
private key, which only the test (the "browser") holds, and keeps the JSON (`messages`).
`answer(token, status)` scripts an answer for one subscription (410, 503, ...).

`subscribe()` plays the browser: a fresh P-256 key and auth secret, and the subscription JSON that
`JSON.stringify(pushSubscription)` would give.
"""
import base64
import datetime
import http.server
import json
import os
import ssl
import threading
import time
import uuid

import http_ece
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "push.test.example"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _certificate(directory, host):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "push-cert.pem"), os.path.join(directory, "push-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class Browser:
    """One subscription's private half."""

    def __init__(self, endpoint):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        self.endpoint = endpoint
        public = self.key.public_key().public_bytes(serialization.Encoding.X962,
                                                    serialization.PublicFormat.UncompressedPoint)
        self.subscription = {"endpoint": endpoint, "expirationTime": None,
                             "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)}}

    def decrypt(self, body):
        return http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth, version="aes128gcm")


class PushService:
    def __init__(self, directory):
        self.cert, key = _certificate(str(directory), HOST)
        self.browsers = {}        # token -> Browser
        self.messages = []        # (token, decrypted JSON)
        self.refusals = []        # what failed the checks, with why
        self.script = {}          # token -> [status, ...]
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = owner._receive(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if status == 201:
                    self.send_header("Location", f"https://{HOST}/message/{uuid.uuid4()}")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.origin = f"https://{HOST}:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def settings(self):
        """What the service needs to reach this push service."""
        return {"WEBPUSH_RESOLVE": [f"{HOST}=127.0.0.1"], "WEBPUSH_CA_FILE": self.cert}

    def subscribe(self):
        token = uuid.uuid4().hex
        browser = Browser(f"{self.origin}/push/{token}")
        self.browsers[token] = browser
        return browser

    def answer(self, browser, *statuses):
        self.script[browser.endpoint.rsplit("/", 1)[1]] = list(statuses)

    def received(self, browser):
        token = browser.endpoint.rsplit("/", 1)[1]
        return [message for t, message in self.messages if t == token]

    def _refuse(self, status, why):
        with self.lock:
            self.refusals.append(why)
        return status

    def _receive(self, path, headers, body):
        headers = {k.lower(): v for k, v in headers.items()}
        token = path.rsplit("/", 1)[1]
        browser = self.browsers.get(token)
        if not path.startswith("/push/") or browser is None:
            return self._refuse(404, f"unknown subscription {path}")
        scheme, _, params = headers.get("authorization", "").partition(" ")
        fields = dict(part.strip().split("=", 1) for part in params.split(",") if "=" in part)
        if scheme != "vapid" or "t" not in fields or "k" not in fields:
            return self._refuse(401, "no vapid authorization")
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(fields["k"]))
            claims = jwt.decode(fields["t"], key, algorithms=["ES256"], audience=self.origin)
        except (ValueError, jwt.PyJWTError) as exc:
            return self._refuse(403, f"bad vapid token: {exc}")
        if not claims["exp"] <= time.time() + 86400 or not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return self._refuse(403, f"bad vapid claims {claims}")
        if headers.get("content-encoding") != "aes128gcm" or "ttl" not in headers:
            return self._refuse(400, "not aes128gcm or no TTL")
        with self.lock:
            scripted = self.script.get(token)
            status = scripted.pop(0) if scripted else 201
        if status != 201:
            return status
        message = json.loads(browser.decrypt(body))
        with self.lock:
            self.messages.append((token, dict(message, _vapid_key=fields["k"], _ttl=headers["ttl"])))
        return 201

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
