"""Real local servers for handler tests: a stand-in vendor API and an SMTP server."""

from __future__ import annotations

import email
import email.policy
import json
import random
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from _support import free_port


@dataclass
class VendorCall:
    path: str
    idempotency_key: str | None
    authorization: str | None
    body: dict[str, Any]
    succeeded: bool = False


@dataclass
class VendorAPI:
    """The vendor's provisioning API: records calls, answers a test link per key.

    ``failures`` is consumed one per request before answering normally: an int is an HTTP
    status to answer with, ``"timeout"`` sleeps past the client's timeout, ``"drop"`` hangs
    up without answering.
    """

    failures: list[int | str] = field(default_factory=list)
    calls: list[VendorCall] = field(default_factory=list)
    slow: float = 0.0
    # Random faults after the scripted ones: P(503) and P(a hang past the client's timeout).
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    seed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        api = self
        rng = random.Random(self.seed)

        def random_failure() -> int | str | None:
            draw = rng.random()
            if draw < api.error_rate:
                return 503
            if draw < api.error_rate + api.timeout_rate:
                return "timeout"
            return None

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("Idempotency-Key")
                call = VendorCall(self.path, key, self.headers.get("Authorization"), body)
                with api.lock:
                    api.calls.append(call)
                    failure = api.failures.pop(0) if api.failures else random_failure()
                if failure == "timeout":
                    time.sleep(2.5)
                elif failure == "drop":
                    self.close_connection = True
                    return
                if api.slow:
                    time.sleep(api.slow)
                if isinstance(failure, int):
                    payload = {"message": f"vendor says no ({failure})"}
                    self._answer(failure, payload)
                    return
                call.succeeded = True
                self._answer(200, {"test_url": f"https://tests.example/t/{key}", "ok": True})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (chaos tests) resets its connection

        self.server = Server(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/provision"

    def calls_per_key(self) -> Counter[str | None]:
        with self.lock:
            return Counter(call.idempotency_key for call in self.calls)

    def succeeded_per_key(self) -> Counter[str | None]:
        """Calls that were answered 2xx (the provisioning happened), per key."""
        with self.lock:
            return Counter(call.idempotency_key for call in self.calls if call.succeeded)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Collector:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        import asyncio

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

    Set ``hold`` to make it stall every RCPT until cleared (to catch a sender mid-send;
    ``stalled`` is set once one is held); put an address in ``defer`` to answer its RCPT with a temporary failure (450).
    """

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.stalled = threading.Event()
        self.defer: set[str] = set()
        self.logins: list[str] = []
        options: dict[str, Any] = {}
        if auth is not None:

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
