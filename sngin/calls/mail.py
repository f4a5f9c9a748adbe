"""email.send for scripts: SMTP through the same egress guard as http.request.

No SMTP client runs on trio, so smtplib runs in a worker thread, bounded by its socket timeout (a
thread cannot be cancelled; the request stops waiting for it at its deadline). The server
resolves the host once, refuses it unless every address is allowed (public, or opened by the
operator), and connects to the address it checked, while TLS is verified for the host name.
"""

from __future__ import annotations

import ipaddress
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Final

import trio

from sngin.errors import CallError
from sngin.tenants.egress import refusal

if TYPE_CHECKING:
    from sandbox.protocol import EmailCall
    from sngin.calls.outbound import Resolver
    from sngin.tenants.egress import EgressPolicy, TenantEgress

IMPLICIT_TLS_PORT: Final = 465
DEFAULT_PORTS: Final = {True: 587, False: 25}  # secure (STARTTLS) or not


class MailRefused(CallError):
    """The message cannot be sent: the text says why (for the script's error)."""


class CheckedSMTP(smtplib.SMTP):
    """smtplib.SMTP that connects to an address checked in advance, while the host name it
    was given stays the one STARTTLS verifies the certificate for."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self._address = address
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return socket.create_connection((self._address, port), timeout)


class CheckedSMTPSSL(smtplib.SMTP_SSL):
    """The same for implicit TLS (port 465)."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self._address = address
        super().__init__(**kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        raw = socket.create_connection((self._address, port), timeout)
        return self.context.wrap_socket(raw, server_hostname=host)


@dataclass(frozen=True, slots=True)
class Mailer:
    policy: EgressPolicy
    resolver: Resolver
    ssl_context: ssl.SSLContext | None = None
    enabled: bool = True

    async def send(
        self, mail: EmailCall, *, timeout_s: float, egress: TenantEgress | None = None
    ) -> None:
        """Send one message within timeout_s, or MailRefused saying why."""
        if not self.enabled:
            raise MailRefused("email is turned off on this server")
        host, port = server_address(mail)
        try:
            with trio.fail_after(min(timeout_s, 10.0)):
                addresses = await self.resolver(host, port)
        except (OSError, UnicodeError, ValueError, trio.TooSlowError):
            raise MailRefused(f"cannot resolve {host}") from None
        if not addresses:
            raise MailRefused(f"cannot resolve {host}")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            refused = refusal(host, address, self.policy, egress)
            if refused is not None:
                raise MailRefused(refused)
        message = build_message(mail)
        context = self.ssl_context or ssl.create_default_context()
        try:
            with trio.fail_after(timeout_s):
                await trio.to_thread.run_sync(
                    deliver, mail, host, port, addresses[0], message, context, timeout_s,
                    abandon_on_cancel=True,
                )  # fmt: skip
        except trio.TooSlowError:
            raise MailRefused(f"timed out after {timeout_s:.3g} s") from None


def server_address(mail: EmailCall) -> tuple[str, int]:
    """`server` is `host` or `host:port`; a `port` field wins; else 587 (secure) or 25."""
    host, _, port_text = (
        mail.server.rpartition(":") if ":" in mail.server else (mail.server, "", "")
    )
    port = mail.port
    if port is None and port_text:
        if not port_text.isdigit():
            raise MailRefused(f"email.send: bad server {mail.server!r}")
        port = int(port_text)
    if port is None:
        port = DEFAULT_PORTS[mail.secure]
    if not host or not 0 < port < 65536:
        raise MailRefused(f"email.send: bad server {mail.server!r}")
    return host, port


def build_message(mail: EmailCall) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail.from_
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=mail.from_.rpartition("@")[2] or None)
    if mail.replyto:
        message["Reply-To"] = mail.replyto
    message.set_content(mail.text or "")
    if mail.html:
        message.add_alternative(mail.html, subtype="html")
    return message


def deliver(
    mail: EmailCall,
    host: str,
    port: int,
    address: str,
    message: EmailMessage,
    context: ssl.SSLContext,
    timeout_s: float,
) -> None:
    """In a worker thread: connect, TLS, log in, send; MailRefused with the server's reason."""
    try:
        # Constructed with the host name (connecting at once): smtplib keeps it for TLS's check.
        if mail.secure and port == IMPLICIT_TLS_PORT:
            client: smtplib.SMTP = CheckedSMTPSSL(
                address, host=host, port=port, context=context, timeout=timeout_s
            )
        else:
            client = CheckedSMTP(address, host=host, port=port, timeout=timeout_s)
        with client:
            if mail.secure and port != IMPLICIT_TLS_PORT:
                client.starttls(context=context)
            if mail.username is not None:
                client.login(mail.username, mail.password or "")
            refused = client.send_message(message)
    except smtplib.SMTPAuthenticationError:
        raise MailRefused("the mail server refused the login") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise MailRefused(
            f"the mail server refused every recipient: {list(exc.recipients)}"
        ) from None
    except smtplib.SMTPNotSupportedError:
        raise MailRefused("the mail server does not support STARTTLS") from None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise MailRefused(f"sending failed: {exc}"[:300]) from None
    if refused:
        raise MailRefused(f"the mail server refused {sorted(refused)}")
