"""E-mail over SMTP (aiosmtplib): STARTTLS or implicit TLS, optional AUTH.

The message is rendered once (with its Message-ID), so a retry sends the same message and a mail client
can tell a retried copy from a new notification.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Annotated, Literal, Self

import aiosmtplib
from pydantic import Field, model_validator

from dcim.core.secrets import Secret
from dcim.rules.hooks.base import Hook, HookConfig, HookError, HookType, reveal

if TYPE_CHECKING:
    import aiohttp

    from dcim.rules.hooks.notification import Notification

Address = Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]


class EmailHook(HookConfig):
    """E-mail over SMTP: one message per notification."""

    type: Literal["email"]
    """email over SMTP."""
    host: str = Field(examples=["smtp.facility.example"])
    """SMTP server (relay) host name."""
    port: Annotated[int, Field(ge=1, le=65535, examples=[587, 465, 25])] = 587
    """SMTP server port: 587 with starttls, 465 with tls."""
    security: Literal["starttls", "tls", "none"] = "starttls"
    """starttls: plain connection upgraded with STARTTLS (587); tls: TLS from the start (465); none: no
    encryption (a local relay only)."""
    username: str | None = None
    """SMTP user name (with `password`); not set: no authentication."""
    password: Secret | None = None
    """SMTP password, as a reference."""
    sender: str = Field(alias="from", pattern=r"^[^@\s]+@[^@\s]+$", examples=["dcim@facility.example"])
    """Sender address (From:)."""
    to: Annotated[list[Address], Field(min_length=1, examples=[["noc@facility.example"]])]
    """Recipient addresses."""
    subject_prefix: str = "[dcim]"
    """Text put before every subject line."""
    ca_file: str | None = None
    """CA bundle to verify the server with (a private CA); the system's trust store otherwise."""

    @model_validator(mode="after")
    def _auth_pair(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self


class EmailSender(Hook):
    def __init__(self, name: str, config: EmailHook) -> None:
        super().__init__(name)
        self.config = config

    def render(self, notification: Notification) -> list[bytes]:
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Subject"] = f"{self.config.subject_prefix} {notification.title}".strip()
        message["Date"] = formatdate(notification.ts_ns / 1e9 if notification.ts_ns else None, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.config.sender.rpartition("@")[2])
        message["X-Dcim-Group"] = notification.group_key
        message["X-Dcim-Status"] = notification.status
        message.set_content(notification.text + "\n")
        return [message.as_bytes()]

    async def send(self, body: bytes, session: aiohttp.ClientSession) -> None:
        config = self.config
        try:
            await aiosmtplib.send(
                body,
                sender=config.sender,
                recipients=config.to,
                hostname=config.host,
                port=config.port,
                use_tls=config.security == "tls",
                start_tls=config.security == "starttls",
                username=config.username,
                password=reveal(config.password),
                cert_bundle=config.ca_file,
                timeout=config.timeout,
            )
        except (
            aiosmtplib.SMTPRecipientsRefused,
            aiosmtplib.SMTPSenderRefused,
            aiosmtplib.SMTPDataError,
        ) as err:
            # The server refused this message: retrying it will not help. A 4xx is a "try later".
            code = getattr(err, "code", 550)
            raise HookError(f"SMTP refused the message: {err}", transient=400 <= code < 500) from err
        except aiosmtplib.SMTPException as err:
            # Connection, TLS, AUTH: the hook's problem; the message waits in the outbox for a fix.
            raise HookError(f"SMTP: {type(err).__name__}: {err}", transient=True) from err
        except (OSError, ssl.SSLError) as err:
            raise HookError(f"SMTP: {type(err).__name__}: {err}", transient=True) from err


HOOK = HookType("email", EmailHook, EmailSender)
