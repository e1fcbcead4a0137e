"""Real local servers for handler tests: a stand-in vendor API and an SMTP server."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from _support import free_port


@dataclass
class VendorCall:
    path: str
    idempotency_key: str | None
    authorization: str | None
    body: dict[str, Any]


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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.headers.get("Idempotency-Key")
                with api.lock:
                    api.calls.append(
                        VendorCall(self.path, key, self.headers.get("Authorization"), body)
                    )
                    failure = api.failures.pop(0) if api.failures else None
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

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/provision"

    def calls_per_key(self) -> Counter[str | None]:
        with self.lock:
            return Counter(call.idempotency_key for call in self.calls)

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
            await asyncio.sleep(0.02)
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

    Set ``hold`` to make it stall every RCPT until cleared (to catch a sender mid-send).
    """

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.lock = threading.Lock()
        self.hold = threading.Event()
        self.controller = Controller(_Collector(self), hostname="127.0.0.1", port=free_port())
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
