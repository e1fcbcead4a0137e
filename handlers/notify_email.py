"""``notify_email``: mails every relevant hiring-team member about the order, once each.

One message per distinct address among the members whose roles intersect ``NOTIFY_ROLES``,
over SMTP (``SMTP_URL``: ``smtp://`` with STARTTLS when the server offers it, or ``smtps://``),
from ``NOTIFY_FROM``. Each recipient mailed is recorded as a sub-effect, so a retry mails only
those not yet mailed; the Message-ID is stable per (order, recipient), so a mail system can
drop the one resend a crash between sending and recording can cause.

Members' addresses and names come from the customer's ATS: attacker-controlled. A member's
``email`` must be exactly one plain addr-spec (``local@domain``), else the member is skipped
with a warning; each message goes to that one address as its only envelope recipient, and
every name that reaches a header is reduced to one line and quoted by the ``email`` package.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Annotated, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dispatcher import (
    BaseHandler,
    HandlerContext,
    Order,
    PermanentFailure,
    RetryLater,
    handler_settings,
)

from ._text import one_line, unprintable


class EmailSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    smtp_url: SecretStr = Field(alias="SMTP_URL")
    sender: str = Field(alias="NOTIFY_FROM")
    roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RECRUITER", "HIRING_MANAGER"], alias="NOTIFY_ROLES"
    )
    timeout: float = Field(30.0, alias="SMTP_TIMEOUT", gt=0)

    @field_validator("roles", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().upper() for part in value.split(",") if part.strip()]
        return value

    @field_validator("sender")
    @classmethod
    def _address(cls, value: str) -> str:
        if "@" not in parseaddr(value)[1]:
            raise ValueError("must be an email address, e.g. 'Acme Tests <tests@acme.example>'")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: SecretStr) -> SecretStr:
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("must look like smtp://host:port or smtps://user:password@host")
        return value


def find_test_url(context: HandlerContext) -> str | None:
    """The candidate's test link from an earlier step (provisioning), if any."""
    preferred = context.outputs.get("provision_http", {})
    for output in (preferred, *context.outputs.values()):
        url = output.get("test_url")
        if isinstance(url, str) and url:
            return url
    return None


class NotifyEmailHandler(BaseHandler):
    """Mail the hiring team."""

    name = "notify_email"

    def __init__(self, settings: EmailSettings | None = None) -> None:
        self.settings = settings or handler_settings(EmailSettings)
        parts = urlsplit(self.settings.smtp_url.get_secret_value())
        self._tls = parts.scheme == "smtps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._tls else 25)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._domain = parseaddr(self.settings.sender)[1].rpartition("@")[2] or "localhost"

    def recipients(self, order: Order, context: HandlerContext) -> Recipients:
        """Distinct valid addresses of members with a notified role (the first member's name
        for each), and how many such members were skipped for an invalid address."""
        wanted = set(self.settings.roles)
        seen: dict[str, Address] = {}
        invalid = 0
        for index, member in enumerate(order.job.hiring_team):
            if not wanted.intersection(str(role) for role in member.hiring_team_roles):
                continue
            field = f"job.hiring_team[{index}].email"
            raw = (member.email or "").strip(" ")
            if not raw:
                context.logger.info(
                    "order %s: %s is empty: member skipped", one_line(order.id, 100), field
                )
                continue
            try:
                addr_spec = _addr_spec(raw)
            except ValueError as exc:
                invalid += 1
                # The address itself is contact data (and may be an attack): DEBUG only.
                context.logger.warning(
                    "order %s: %s is not one email address (%s): member skipped",
                    one_line(order.id, 100),
                    field,
                    exc,
                )
                context.logger.debug("%s rejected: %r", field, raw)
                continue
            name = one_line(" ".join(filter(None, (member.first_name, member.last_name))), 100)
            seen.setdefault(addr_spec.lower(), Address(display_name=name, addr_spec=addr_spec))
        return Recipients(list(seen.values()), invalid)

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        recipients = self.recipients(order, context)
        pending = [r for r in recipients.addresses if not context.effects.done(_effect(r))]
        sent = refused = 0
        deferred: list[int] = []
        if pending:
            test_url = find_test_url(context)
            # An SMTP client span (tracing on): the server and how many mails, no addresses.
            smtp_span = context.trace.span(
                "smtp send",
                kind="client",
                **{"server.address": self._host, "server.port": self._port},
                **{"dispatcher.recipients": len(pending)},
            )
            with smtp_span, self._connect() as smtp:
                for recipient in pending:
                    message = self.message(order, context, recipient, test_url)
                    try:
                        # Explicit envelope: without to_addrs smtplib takes the recipients
                        # from the To: header, so the header would decide who gets mail.
                        smtp.send_message(message, to_addrs=[recipient.addr_spec])
                    except smtplib.SMTPRecipientsRefused as exc:
                        # One envelope recipient, so one entry; the default only keeps an
                        # empty answer from raising StopIteration out of the step.
                        code = next(iter(exc.recipients.values()), (550, b""))[0]
                        if code < 500:
                            # Mail the others now; the retry mails only this one.
                            deferred.append(code)
                            continue
                        refused += 1
                        context.logger.warning("SMTP server refused a recipient (%s)", code)
                        context.effects.record(_effect(recipient))
                        continue
                    except smtplib.SMTPResponseException as exc:
                        raise _classify(exc) from None
                    sent += 1
                    context.effects.record(_effect(recipient))
        context.logger.info(
            "notified %d of %d recipients (%d earlier, %d refused, %d deferred); "
            "%d members skipped for an invalid email",
            sent,
            len(recipients.addresses),
            len(recipients.addresses) - len(pending),
            refused,
            len(deferred),
            recipients.invalid,
        )
        if deferred:
            raise RetryLater(f"SMTP server deferred {len(deferred)} recipient(s) ({deferred[0]})")
        return {
            "recipients": len(recipients.addresses),
            "sent": sent,
            "refused": refused,
            "invalid": recipients.invalid,
        }

    def message(
        self, order: Order, context: HandlerContext, recipient: Address, test_url: str | None
    ) -> EmailMessage:
        """The notification to one recipient (plain text with an HTML alternative).

        Names, the job title and ids come from the ATS: each is reduced to one line before it
        reaches a header (a line break there is a new header) or the text.
        """
        candidate = one_line(order.candidate.full_name, 200)
        job = one_line(order.job.name or "", 200) or "an open position"
        order_id = one_line(order.id, 200)
        package_id = one_line(order.package_id, 200)
        message = EmailMessage()
        message["Subject"] = f"Assessment ordered for {candidate}: {job}"
        message["From"] = self.settings.sender
        message["To"] = recipient
        digest = hashlib.sha256(
            "\x00".join((context.idempotency_key, recipient.addr_spec.lower())).encode()
        ).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@{self._domain}>"
        message["X-Kombo-Order-Id"] = order_id
        link = f"Test link: {test_url}\n" if test_url else ""
        message.set_content(
            f"{candidate} has been sent the {package_id} assessment for {job}.\n"
            f"{link}\nKombo order reference: {order_id}\n"
        )
        e = html.escape
        link_html = (
            f'<p>Test link: <a href="{e(test_url)}">{e(test_url)}</a></p>' if test_url else ""
        )
        message.add_alternative(
            f"<p><strong>{e(candidate)}</strong> has been sent the <em>{e(package_id)}"
            f"</em> assessment for <strong>{e(job)}</strong>.</p>{link_html}"
            f"<p>Kombo order reference: <code>{e(order_id)}</code></p>",
            subtype="html",
        )
        return message

    @contextmanager
    def _connect(self) -> Iterator[smtplib.SMTP]:
        try:
            smtp: smtplib.SMTP
            if self._tls:
                smtp = smtplib.SMTP_SSL(
                    self._host,
                    self._port,
                    timeout=self.settings.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(self._host, self._port, timeout=self.settings.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise RetryLater(f"SMTP server {self._host}:{self._port} unreachable ({exc})") from None
        try:
            smtp.ehlo()
            if not self._tls and smtp.has_extn("starttls"):
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self._user:
                smtp.login(self._user, self._password or "")
            yield smtp
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentFailure(f"SMTP login refused ({exc.smtp_code})") from None
        except (TimeoutError, OSError, smtplib.SMTPServerDisconnected) as exc:
            raise RetryLater(f"SMTP connection failed ({type(exc).__name__})") from None
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


class Recipients(NamedTuple):
    """Whom an order's notification goes to, and how many members had an invalid email."""

    addresses: list[Address]
    invalid: int


# RFC 5321: a path is at most 256 octets with its angle brackets, a local part at most 64.
_MAX_ADDRESS = 254
_MAX_LOCAL_PART = 64


def _addr_spec(raw: str) -> str:
    """``raw`` as one plain ASCII ``local@domain``, or ValueError saying (safely) why not.

    The stdlib parser decides what an addr-spec is; on top of it we refuse what it accepts but
    no hiring-team member needs and where mail software disagrees: comments and folding
    whitespace (the parsed form differs from the input), quoted local parts and domain
    literals. A non-ASCII domain is IDNA-encoded so the server needs no SMTPUTF8.
    """
    if any(unprintable(char) for char in raw):
        raise ValueError("control characters")
    if any(char.isspace() for char in raw):
        raise ValueError("whitespace")
    if len(raw) > _MAX_ADDRESS:
        raise ValueError(f"longer than {_MAX_ADDRESS} characters")
    try:
        parsed = Address(addr_spec=raw)
    except (ValueError, HeaderParseError, IndexError, AttributeError):
        # IndexError: the 3.11 parser's answer to a bare 'local@'; AttributeError: to an
        # unclosed domain literal, '0@[' (its defect list holds a defect, not a token).
        raise ValueError("not a plain local@domain address") from None
    local, domain = parsed.username, parsed.domain
    if parsed.addr_spec != raw or '"' in raw or domain.startswith("[") or not local.isascii():
        raise ValueError("not a plain local@domain address")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("domain cannot be IDNA-encoded") from None
    if len(local) > _MAX_LOCAL_PART or len(local) + 1 + len(domain) > _MAX_ADDRESS:
        raise ValueError("too long")
    return f"{local}@{domain}"


def _effect(recipient: Address) -> str:
    return f"mail:{recipient.addr_spec.lower()}"


def _classify(exc: smtplib.SMTPResponseException) -> Exception:
    if 400 <= exc.smtp_code < 500:
        return RetryLater(f"SMTP server deferred the message ({exc.smtp_code})")
    return PermanentFailure(f"SMTP server refused the message ({exc.smtp_code})")
