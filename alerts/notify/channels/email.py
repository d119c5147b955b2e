"""SMTP e-mail: a text and an HTML part, over STARTTLS, implicit TLS or plain (a local
relay). SMTP 4xx and connection errors are retried; 5xx and refused logins are not."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Literal

from alerts.notify.model import ChannelError, Message


class EmailChannel:
    """Sends each message as one e-mail to the configured recipients."""

    type = "email"

    def __init__(self, name: str, host: str, port: int, sender: str, to: list[str], *,
                 security: Literal["starttls", "tls", "none"] = "starttls",
                 username: str = "", password: str = "", timeout: float = 10.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.sender = sender
        self.to = list(to)
        self.security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        self._tls = tls_context or ssl.create_default_context()

    def build(self, message: Message) -> EmailMessage:
        """The e-mail (text first, HTML as the preferred alternative)."""
        mail = EmailMessage()
        mail["Subject"] = message.title
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        mail.set_content(message.text)
        mail.add_alternative(message.html, subtype="html")
        return mail

    def send(self, message: Message) -> None:
        """Connect, secure, log in when configured, send."""
        mail = self.build(message)
        try:
            smtp: smtplib.SMTP
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self._timeout,
                                        context=self._tls)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self._timeout)
            with smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self._tls)
                if self._username:
                    smtp.login(self._username, self._password)
                smtp.send_message(mail)
        except smtplib.SMTPAuthenticationError as exc:
            raise ChannelError(f"{self.name}: login refused ({exc.smtp_code})",
                               retryable=False, status=exc.smtp_code) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            raise ChannelError(f"{self.name}: recipients refused {codes}",
                               retryable=all(400 <= c < 500 for c in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            raise ChannelError(f"{self.name}: SMTP {exc.smtp_code}",
                               retryable=400 <= exc.smtp_code < 500,
                               status=exc.smtp_code) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise ChannelError(f"{self.name}: {exc}", retryable=False) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise ChannelError(f"{self.name}: cannot send ({type(exc).__name__}: {exc})",
                               retryable=True) from exc
