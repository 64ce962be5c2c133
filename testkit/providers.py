"""Real local servers standing in for the providers (SMTP, Twilio, webhooks).

- `FakeSMTP`: an aiosmtpd SMTP server on a free port that keeps every message
  (`SMTPProcess`: the same in a process of its own, for load scenarios)
  (optionally STARTTLS or implicit TLS, optionally refusing recipients).
  `on_rcpt`, `on_data` and `on_quit` run just before it answers RCPT, DATA
  (the acceptance) and QUIT: a test looks at the database there, or kills the
  sender.
- `FakeTwilio`: a stdlib HTTP server speaking the shape of Twilio's Messages API
  (form fields, basic auth, 201 with a `sid`, Twilio's error JSON); `status_callback` builds the
  signed delivery report Twilio would post to a message's StatusCallback.
- `FakeHTTP`: a stdlib HTTP server that records JSON posts (webhook, Apprise json://).
  Both HTTP fakes answer from a script of responses first (`fail(...)`), then
  with `always` if set, else success; `on_request` runs before each answer.

The configuration that points the service at them: testkit.config_files; running the
delivery jobs: testkit.jobs.
"""
import base64
import collections
import hashlib
import hmac
import datetime
import email
import email.policy
import http.server
import json
import multiprocessing
import re
import threading
import time
import uuid
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller

from devtools.services import free_port

# ---------------------------------------------------------------- SMTP


class _SMTPHandler:
    def __init__(self, owner):
        self.owner = owner

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.owner.on_rcpt is not None:
            self.owner.on_rcpt()
        if self.owner.refuse_rcpt:
            return self.owner.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        at = time.time()   # the whole message is here: from now on it counts as received
        if self.owner.on_data is not None:
            self.owner.on_data()
        if self.owner.refuse_data:
            return self.owner.refuse_data
        raw = (envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.ssl is not None, at)
        self.owner.messages.append(_received(*raw) if self.owner.parse else raw)
        return "250 Message accepted"

    async def handle_QUIT(self, server, session, envelope):
        if self.owner.on_quit is not None:
            self.owner.on_quit()
        self.owner.quits += 1
        return "221 Bye"


class FakeSMTP:
    """An SMTP server on 127.0.0.1; `start()` may come later than the first attempt."""

    def __init__(self, port=None, tls_context=None, ssl_context=None, parse=True):
        self.port, self.parse = port or free_port(), parse   # parse=False keeps raw tuples for _received
        self.tls_context, self.ssl_context = tls_context, ssl_context
        self.messages, self.quits, self.refuse_rcpt = [], 0, None
        self.on_data = self.on_quit = None     # callables run before answering DATA / QUIT
        self.on_rcpt = None                    # ... and RCPT
        self.refuse_data = None                # an answer to the whole message instead of 250
        self.controller = None

    def start(self):
        kwargs = {}
        if self.tls_context is not None:
            kwargs.update(tls_context=self.tls_context, require_starttls=True)
        if self.ssl_context is not None:
            kwargs.update(ssl_context=self.ssl_context)
        self.controller = Controller(_SMTPHandler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


def _received(mail_from, rcpt_tos, data, tls, at):
    """One stored message, as `FakeSMTP.messages` holds it; `at`: when the server had all of it."""
    return {"mail_from": mail_from, "rcpt_tos": list(rcpt_tos), "data": data, "tls": tls, "at": at,
            "message": email.message_from_bytes(data, policy=email.policy.default)}


def _serve_smtp(port, conn):
    """SMTPProcess's child: a FakeSMTP that sends the messages stored since index N on request."""
    server = FakeSMTP(port=port, parse=False).start()
    conn.send("ready")
    while (start := conn.recv()) is not None:
        conn.send(server.messages[start:])
    server.stop()


class SMTPProcess:
    """FakeSMTP in a process of its own, for load scenarios, that answers 250 without parsing
    the message first (the parent parses what it fetches). In the load generator's process its
    250 would wait for the GIL (milliseconds behind 8 posting threads), and parsing first takes
    about a millisecond more: a stall between having the message and acknowledging it, in
    which a sender killed has its message received but not acknowledged. A real MTA has such
    a stall too (its queue write), but this fake's would be measured as ours."""

    def __init__(self, port=None):
        self.port = port or free_port()
        self._messages, self.proc, self._conn = [], None, None

    def start(self):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve_smtp, args=(self.port, child), daemon=True)
        self.proc.start()
        if not (self._conn.poll(30) and self._conn.recv() == "ready"):
            raise RuntimeError("the SMTP server process did not start")
        return self

    @property
    def messages(self):
        if self.proc is not None:
            self._conn.send(len(self._messages))
            self._messages.extend(_received(*m) for m in self._conn.recv())
        return self._messages

    def stop(self):
        if self.proc is not None:
            self._conn.send(None)
            self.proc.join(10)
            self.proc = None


def self_signed_cert(directory):
    """A certificate for 127.0.0.1 / localhost and its key, as PEM files; (cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# ---------------------------------------------------------------- HTTP

Request = collections.namedtuple("Request", "method path headers body form json auth")


class FakeHTTP:
    """A threaded HTTP server that records requests and answers from a script."""

    def __init__(self, port=0):
        self.requests = []
        self.script = collections.deque()     # (status, payload, delay seconds)
        self.always = None                    # (status, payload, delay) once the script is used up
        self.on_request = None                # a callable run before each answer
        self.lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, payload = owner._answer(self, raw)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)   # port: one used before
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # stop() waits for the server's next poll: every 50 ms, not the default 500
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def fail(self, status, payload=None, times=1, delay=0):
        """The next `times` requests get this answer."""
        for _ in range(times):
            self.script.append((status, payload if payload is not None else {"message": "failure"}, delay))

    def _scripted(self):
        with self.lock:
            if self.script:
                return self.script.popleft()
        return self.always

    def _record(self, handler, raw):
        auth = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            auth = tuple(base64.b64decode(header[6:]).decode().split(":", 1))
        ctype = handler.headers.get("Content-Type", "")
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()} if "form-urlencoded" in ctype else None
        body_json = json.loads(raw) if "json" in ctype and raw else None
        request = Request(handler.command, handler.path, dict(handler.headers), raw, form, body_json, auth)
        with self.lock:
            self.requests.append(request)
        if self.on_request is not None:
            self.on_request()
        return request

    def _answer(self, handler, raw):
        request = self._record(handler, raw)
        scripted = self._scripted()
        if scripted is not None:
            status, payload, delay = scripted
            time.sleep(delay)
            return status, payload
        return self.succeed(request)

    def succeed(self, request):
        return 200, {"id": f"msg-{len(self.requests)}"}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class FakeTwilio(FakeHTTP):
    """Twilio's Messages API: POST /2010-04-01/Accounts/{sid}/Messages.json, form data, basic auth."""

    PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")

    def __init__(self, account_sid="AC" + "1" * 32, auth_token="secret-token", sender="+15005550006", port=0):
        self.account_sid, self.auth_token, self.sender = account_sid, auth_token, sender
        self.messages = []    # form fields of every request Twilio accepted
        self.sent = []        # ... of those it answered itself (no script), with the `sid` it gave
        super().__init__(port)

    def _answer(self, handler, raw):
        request = self._record(handler, raw)
        match = self.PATH.match(handler.path)
        if match is None:
            return 404, self.error(20404, "The requested resource was not found", 404)
        if request.auth != (self.account_sid, self.auth_token) or match["sid"] != self.account_sid:
            return 401, self.error(20003, "Authenticate", 401)
        scripted = self._scripted()
        if scripted is not None:
            status, payload, delay = scripted
            time.sleep(delay)
            if status < 300:
                self.messages.append(request.form)
            return status, payload
        self.messages.append(request.form)
        form = request.form or {}
        sid = "SM" + uuid.uuid4().hex
        self.sent.append(dict(form, sid=sid))
        return 201, {"sid": sid, "account_sid": self.account_sid, "to": form.get("To"),
                     "from": form.get("From"), "body": form.get("Body"), "status": "queued",
                     "num_segments": "1", "api_version": "2010-04-01"}

    def status_callback(self, message, status, error_code=None, token=None):
        """(URL, form, headers) of the status callback Twilio posts for an accepted `message` (an item
        of `sent`), signed the way Twilio documents it (www.twilio.com/docs/usage/security#validating-requests)."""
        sid = message["sid"]
        form = {"MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid, "From": self.sender,
                "To": message.get("To"), "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01"}
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        url = message["StatusCallback"]
        return url, form, {"X-Twilio-Signature": twilio_signature(url, form, token or self.auth_token)}

    @staticmethod
    def error(code, message, status):
        """Twilio's error body."""
        return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status}


def twilio_signature(url, params, token):
    """X-Twilio-Signature: base64 HMAC-SHA1 under the auth token of the URL, then each POST parameter's
    name and value, sorted by name."""
    data = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()
