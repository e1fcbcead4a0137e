"""``notify_email``: mails every relevant hiring-team member about the order, once each.

One message per distinct address among the members whose roles intersect ``NOTIFY_ROLES``,
over SMTP (``SMTP_URL``: ``smtp://`` with STARTTLS when the server offers it, or ``smtps://``),
from ``NOTIFY_FROM``. Each recipient mailed is recorded as a sub-effect, so a retry mails only
those not yet mailed; the Message-ID is stable per (order, recipient), so a mail system can
drop the one resend a crash between sending and recording can cause.
"""

from __future__ import annotations

import hashlib
import html
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formataddr, parseaddr
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from dispatcher import HandlerContext, Order, PermanentFailure, RetryLater, handler_settings


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


class NotifyEmailHandler:
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

    def recipients(self, order: Order, context: HandlerContext) -> list[str]:
        """Distinct addresses of members with a notified role; members without one logged."""
        wanted = set(self.settings.roles)
        seen: dict[str, str] = {}
        for member in order.job.hiring_team:
            if not wanted.intersection(str(role) for role in member.hiring_team_roles):
                continue
            if not member.email:
                context.logger.info(
                    "hiring-team member %s has no email address: skipped",
                    member.remote_id or "(no remote id)",
                )
                continue
            seen.setdefault(member.email.strip().lower(), member.email.strip())
        return list(seen.values())

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        recipients = self.recipients(order, context)
        pending = [r for r in recipients if not context.effects.done(_effect(r))]
        refused = 0
        if pending:
            test_url = find_test_url(context)
            with self._connect() as smtp:
                for recipient in pending:
                    message = self.message(order, context, recipient, test_url)
                    try:
                        smtp.send_message(message)
                    except smtplib.SMTPRecipientsRefused as exc:
                        code = next(iter(exc.recipients.values()))[0]
                        if code < 500:
                            raise RetryLater(f"SMTP server deferred a recipient ({code})") from None
                        refused += 1
                        context.logger.warning("SMTP server refused a recipient (%s)", code)
                        context.effects.record(_effect(recipient))
                        continue
                    except smtplib.SMTPResponseException as exc:
                        raise _classify(exc) from None
                    context.effects.record(_effect(recipient))
        context.logger.info(
            "notified %d of %d recipients (%d earlier)",
            len(pending) - refused,
            len(recipients),
            len(recipients) - len(pending),
        )
        return {"recipients": len(recipients), "sent": len(pending) - refused, "refused": refused}

    def message(
        self, order: Order, context: HandlerContext, recipient: str, test_url: str | None
    ) -> EmailMessage:
        """The notification to one recipient (plain text with an HTML alternative)."""
        candidate = order.candidate.full_name
        job = order.job.name or "an open position"
        message = EmailMessage()
        message["Subject"] = f"Assessment ordered for {candidate}: {job}"
        message["From"] = self.settings.sender
        message["To"] = formataddr(("", recipient))
        digest = hashlib.sha256(
            "\x00".join((context.idempotency_key, recipient.lower())).encode()
        ).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}@{self._domain}>"
        message["X-Kombo-Order-Id"] = order.id
        link = f"Test link: {test_url}\n" if test_url else ""
        message.set_content(
            f"{candidate} has been sent the {order.package_id} assessment for {job}.\n"
            f"{link}\nKombo order reference: {order.id}\n"
        )
        e = html.escape
        link_html = (
            f'<p>Test link: <a href="{e(test_url)}">{e(test_url)}</a></p>' if test_url else ""
        )
        message.add_alternative(
            f"<p><strong>{e(candidate)}</strong> has been sent the <em>{e(order.package_id)}"
            f"</em> assessment for <strong>{e(job)}</strong>.</p>{link_html}"
            f"<p>Kombo order reference: <code>{e(order.id)}</code></p>",
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


def _effect(recipient: str) -> str:
    return f"mail:{recipient.lower()}"


def _classify(exc: smtplib.SMTPResponseException) -> Exception:
    if 400 <= exc.smtp_code < 500:
        return RetryLater(f"SMTP server deferred the message ({exc.smtp_code})")
    return PermanentFailure(f"SMTP server refused the message ({exc.smtp_code})")
