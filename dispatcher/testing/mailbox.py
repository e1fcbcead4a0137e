"""An SMTP server that keeps what it receives, for ``notify_email`` in the demo and the tests.

It is aiosmtpd (the ``demo`` and ``test`` extras), imported only when a :class:`Mailbox`
starts: ``import dispatcher`` never needs it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import warnings
from collections import Counter
from email.message import EmailMessage
from typing import Any

from dispatcher.testing import free_port

__all__ = ["Mailbox"]


class _Collector:
    """aiosmtpd's handler: stalls, defers or accepts each recipient, keeps each message."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        while self.mailbox.hold.is_set():
            self.mailbox.stalled.set()
            await asyncio.sleep(0.02)
        if address.lower() in self.mailbox.defer:
            return "450 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self.mailbox.lock:
            self.mailbox.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"


class Mailbox:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it receives.

    Set ``hold`` to make it stall every RCPT until cleared (to catch a sender mid-send); put
    an address in ``defer`` to answer its RCPT with a temporary failure (450). With ``auth``
    (login, password) it requires plain-text AUTH, on loopback only.
    """

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.stalled = threading.Event()  # set once a held RCPT is waiting
        self.defer: set[str] = set()
        self.logins: list[str] = []
        options: dict[str, Any] = {}
        if auth is not None:
            from aiosmtpd.smtp import AuthResult

            def authenticator(
                server: Any, session: Any, envelope: Any, mechanism: str, data: Any
            ) -> AuthResult:
                ok = (data.login.decode(), data.password.decode()) == auth
                if ok:
                    self.logins.append(data.login.decode())
                return AuthResult(success=ok)

            # Plain-text AUTH on loopback only: the tests have no certificates.
            options = {
                "authenticator": authenticator,
                "auth_required": True,
                "auth_require_tls": False,
            }
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without TLS, which is what we mean to test here.
            warnings.simplefilter("ignore", UserWarning)
            self.controller = Controller(
                _Collector(self), hostname="127.0.0.1", port=free_port(), **options
            )
            self.controller.start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.controller.port}"

    def by_recipient(self) -> Counter[str]:
        with self.lock:
            return Counter(r.lower() for rcpts, _ in self.messages for r in rcpts)

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["Message-ID"]) for _, m in self.messages)

    def close(self) -> None:
        self.controller.stop()
