"""Email through flask-mail over SMTP: a text part and an HTML part per message.

The Message-ID is derived from the delivery id, so a resent attempt carries
the same id and receiving systems can recognise it as the same message.
"""
import smtplib
import socket

from flask_mail import Mail, Message

from .base import Channel, PermanentError, RetryableError
from .email_render import render_email


class EmailChannel(Channel):
    needs = "email"

    def __init__(self, name, options, app):
        super().__init__(name, options, app)
        self.mail = Mail(app)

    def message_id(self, outbound):
        domain = self.app.config["MAIL_DEFAULT_SENDER"].rpartition("@")[2].strip(">") or "localhost"
        return f"<{outbound.delivery_id}@{domain}>"

    def send(self, outbound):
        subject, text, html = render_email(self.app, outbound)
        message = Message(subject=subject, recipients=[outbound.contact["email"]], body=text, html=html,
                          extra_headers={"Message-ID": self.message_id(outbound),
                                         "List-Unsubscribe": f"<{self.app.config['PUBLIC_URL']}"
                                                             "/v1/notifications/preferences>"})
        try:
            self.mail.send(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(f"recipient refused: {exc.recipients}")
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
            raise RetryableError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
        except (smtplib.SMTPException, OSError, socket.timeout) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}")
        return self.message_id(outbound)
