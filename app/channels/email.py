"""Email through flask-mail over SMTP: one multipart/alternative message (text + HTML).

Settings (flask-mail's names, from the environment): MAIL_SERVER, MAIL_PORT,
MAIL_USE_TLS (STARTTLS), MAIL_USE_SSL (implicit TLS, usually port 465),
MAIL_USERNAME, MAIL_PASSWORD, MAIL_DEFAULT_SENDER, and MAIL_TIMEOUT (seconds
for connecting and for every SMTP reply). Channel options in
notifications.yaml: `sender` (overrides MAIL_DEFAULT_SENDER), `timeout`
(overrides MAIL_TIMEOUT), `ca_file` (a PEM bundle to trust for a relay with a
private CA; certificates are always verified), `unsubscribe_url` and
`unsubscribe_mailto` (List-Unsubscribe targets, templates over the
notification, `user_id` and `preferences_url`).

flask-mail 0.10 opens one SMTP connection per `Mail.send` and quits it
afterwards, which is what we want (no connection is kept between
deliveries), but it passes no timeout to smtplib (a dead relay would hang the
worker), uses an unverified TLS context for STARTTLS and SSL, leaks the socket
when STARTTLS or login fails, and lets a failing QUIT after an accepted
message raise (which would make us send it again). `SMTPConnection` below is
flask-mail's Connection with those four things fixed, and a fifth: the
delivery is recorded as sent the moment DATA's final dot has left, before the
server's answer is read (`_SubmitHook`; a refusal or no answer takes the
record back), and `send` reports the acceptance (the 250) when `sendmail`
returns, before flask-mail's signal and before QUIT.

Before a connection is opened, every header value is checked again
(`refuse_bad_headers`): an address stored before today's contact rules, or a
template that puts a line break in a header, fails the delivery at once with
the reason (never the address), and nothing reaches the relay. flask-mail's
own check knows only CR and LF; Python's email generator also breaks lines at
\x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029.

The Message-ID is derived from the delivery id, so every attempt of one
delivery carries the same id (receiving systems can recognise a resend), and
it is what the delivery records as its provider message id.
"""
import smtplib
import ssl
import time
from email.utils import parseaddr

import flask_mail
from flask import current_app
from flask_mail import BadHeaderError, Mail, Message, sanitize_address, sanitize_addresses

from ..contacts.addresses import email_problem
from ..errors import ConfigError
from ..sanitize import CONTROLS
from .base import Channel, PermanentError, RetryableError, expand_env
from .email_render import render_email, unsubscribe_targets


class _SubmitHook:
    """Calls `self.submitted()` the moment DATA's final dot has been handed to the kernel, before
    the server's answer is read (app/deliveries/receipt.py, `Receipt.submit`, says why)."""

    submitted = None
    _in_data = False

    def data(self, msg):
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False

    def send(self, s):
        super().send(s)
        if self._in_data and self.submitted is not None and isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self._in_data = False   # smtplib's data() sends the whole message, dot included, at once
            self.submitted()


class _SMTP(_SubmitHook, smtplib.SMTP):
    pass


class _SMTP_SSL(_SubmitHook, smtplib.SMTP_SSL):
    pass


class SMTPConnection(flask_mail.Connection):
    """flask-mail's connection with a timeout, verified TLS and a close that never masks a send."""

    def __init__(self, state, timeout, tls_context):
        super().__init__(state)
        self.timeout, self.tls_context = timeout, tls_context

    def configure_host(self):
        mail = self.mail
        if mail.use_ssl:
            host = _SMTP_SSL(mail.server, mail.port, timeout=self.timeout, context=self.tls_context)
        else:
            host = _SMTP(mail.server, mail.port, timeout=self.timeout)
        try:
            host.set_debuglevel(int(mail.debug))
            if mail.use_tls:
                host.starttls(context=self.tls_context)
            if mail.username and mail.password:
                host.login(mail.username, mail.password)
        except BaseException:
            host.close()
            raise
        return host

    def send(self, message, accepted):
        """flask-mail's `send`, with `accepted(Message-ID)` called as soon as the server took it."""
        if message.has_bad_headers():
            raise BadHeaderError
        if message.date is None:
            message.date = time.time()
        if self.host is not None:
            submit = getattr(accepted, "submit", None)
            if submit is not None:
                self.host.submitted = lambda: submit(message.msgId)
            self.host.sendmail(sanitize_address(message.sender), list(sanitize_addresses(message.send_to)),
                               message.as_bytes(), message.mail_options, message.rcpt_options)
        accepted(message.msgId)
        flask_mail.email_dispatched.send(current_app._get_current_object(), message=message)

    def __exit__(self, exc_type, exc_value, tb):
        host, self.host = self.host, None
        if host is None:
            return
        try:
            host.quit()
        except (smtplib.SMTPException, OSError):
            host.close()   # the message (if any) was already accepted; a failed goodbye changes nothing


class EmailChannel(Channel):
    needs = "email"

    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        if app.config["MAIL_USE_TLS"] and app.config["MAIL_USE_SSL"]:
            raise ConfigError("environment", "MAIL_USE_SSL",
                              "MAIL_USE_TLS (STARTTLS) and MAIL_USE_SSL (implicit TLS) exclude each other")
        self.mail = Mail(app)
        self.sender = expand_env(options.get("sender")) or app.config["MAIL_DEFAULT_SENDER"]
        if not parseaddr(self.sender)[1]:
            raise ConfigError("environment", "MAIL_DEFAULT_SENDER", f"is not an email address: {self.sender!r}")
        if CONTROLS.search(self.sender):
            raise ConfigError("environment", "MAIL_DEFAULT_SENDER", "contains a control character or line break "
                              f"(U+{ord(CONTROLS.search(self.sender).group()):04X})")
        self.timeout = float(options.get("timeout") or app.config["MAIL_TIMEOUT"])
        ca_file = expand_env(options.get("ca_file")) or None
        try:
            self.tls_context = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(app.config["NOTIFICATIONS_CONFIG"], f"channels.{name}.ca_file",
                              f"cannot be loaded: {exc}")
        domain = parseaddr(self.sender)[1].rpartition("@")[2]
        self.domain = domain or "localhost"

    def message_id(self, outbound):
        return f"<{outbound.delivery_id}@{self.domain}>"

    def build(self, outbound):
        """The flask-mail Message of one delivery."""
        subject, text, html = render_email(self.app, outbound)
        headers = {"Auto-Submitted": "auto-generated", "Content-Language": outbound.locale}
        targets = unsubscribe_targets(self.app, self.options, outbound)
        if targets:
            headers["List-Unsubscribe"] = ", ".join(f"<{t}>" for t in targets)
        message = Message(subject=subject, recipients=[outbound.contact["email"]], body=text, html=html,
                          sender=self.sender, extra_headers=headers)
        # flask-mail writes msgId as the Message-ID header; an extra header would add a second one
        message.msgId = self.message_id(outbound)
        return message

    def send(self, outbound):
        message = self.build(outbound)
        refuse_bad_headers(message)
        try:
            with SMTPConnection(self.mail.state, self.timeout, self.tls_context) as connection:
                connection.send(message, outbound.accepted)
        except BadHeaderError:
            raise PermanentError("message refused before sending: a header contains a line break",
                                 "invalid_message")
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            why = "; ".join(f"{code} {_text(msg)}" for code, msg in exc.recipients.values())
            if codes and all(500 <= code < 600 for code in codes):
                raise PermanentError(f"recipient refused: {why}", "invalid_recipient", codes[0])
            raise RetryableError(f"recipient deferred: {why}", "recipient_deferred", min(codes, default=None))
        except smtplib.SMTPAuthenticationError as exc:
            # our credentials, not this message: worth retrying once an operator fixed them
            raise RetryableError(f"SMTP authentication failed: {exc.smtp_code} {_text(exc.smtp_error)}",
                                 "auth_failed", exc.smtp_code)
        except smtplib.SMTPResponseException as exc:
            text = f"SMTP {exc.smtp_code}: {_text(exc.smtp_error)}"
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(f"message refused: {text}", "provider_refused", exc.smtp_code)
            raise RetryableError(text, "provider_error", exc.smtp_code)
        except (smtplib.SMTPException, OSError) as exc:   # OSError: refused, reset, timeout, TLS
            raise RetryableError(f"{type(exc).__name__}: {exc}"[:500])
        return message.msgId


def _header_values(message):
    """(header name, value) of every header the message will carry."""
    yield "Subject", message.subject
    yield "From", message.sender
    yield "Message-ID", message.msgId
    for name, addresses in (("To", message.recipients), ("Cc", message.cc), ("Bcc", message.bcc),
                            ("Reply-To", [message.reply_to] if message.reply_to else [])):
        for address in addresses:
            yield name, " ".join(address) if isinstance(address, tuple) else address
    yield from (message.extra_headers or {}).items()


def refuse_bad_headers(message):
    """A PermanentError (nothing sent) when an address could carry another header or a header
    value could break its line; the reason names the header, never its value."""
    for name, addresses in (("To", message.recipients), ("Cc", message.cc), ("Bcc", message.bcc)):
        for address in addresses:
            problem = email_problem(address[1] if isinstance(address, tuple) else address)
            if problem:
                raise PermanentError(f"message refused before sending: the {name} address {problem}",
                                     "invalid_recipient")
    for name, value in _header_values(message):
        found = CONTROLS.search(value or "")
        if found:
            raise PermanentError(f"message refused before sending: the {name} header contains a control "
                                 f"character or line break (U+{ord(found.group()):04X})", "invalid_message")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
