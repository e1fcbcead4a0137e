"""A vendor's provisioning API on a real socket, for ``provision_http`` in the demo, the
tests and the benchmarks: it records every call and answers a test link per idempotency key,
or fails as a test scripts it (an HTTP status, a hang past the client's timeout, a hang-up),
and can answer after a fixed delay like a slow vendor.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dispatcher.testing import free_port

__all__ = ["VendorAPI", "VendorCall"]


@dataclass
class VendorCall:
    """One request the vendor received."""

    path: str
    idempotency_key: str | None
    authorization: str | None
    body: dict[str, Any]
    succeeded: bool = False
    # Every header, names lower-cased (the tracing tests read ``traceparent``).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class VendorAPI:
    """The vendor's provisioning API: records calls, answers a test link per key.

    ``failures`` is consumed one per request before answering normally: an int is an HTTP
    status to answer with, ``"timeout"`` sleeps past the client's timeout, ``"drop"`` hangs
    up without answering. ``slow`` delays every answer by that many seconds.
    """

    failures: list[int | str] = field(default_factory=list)
    calls: list[VendorCall] = field(default_factory=list)
    slow: float = 0.0
    # Random faults after the scripted ones: P(503) and P(a hang past the client's timeout).
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    seed: int = 0
    # A Set-Cookie header sent with every answer (a vendor's session or load-balancer cookie).
    cookie: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.server = _Server(("127.0.0.1", free_port()), _Handler)
        self.server.api = self
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

    def _record(self, call: VendorCall) -> int | str | None:
        """Keep ``call``; the failure to answer it with, if any."""
        with self.lock:
            self.calls.append(call)
            if self.failures:
                return self.failures.pop(0)
            draw = self._rng.random()
        if draw < self.error_rate:
            return 503
        if draw < self.error_rate + self.timeout_rate:
            return "timeout"
        return None


class _Server(ThreadingHTTPServer):
    api: VendorAPI
    # socketserver listens with a backlog of 5: 50 worker threads connecting at once had
    # connections reset (ECONNRESET) before the server accepted them. A real API's is larger.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client killed mid-request (chaos tests) resets its connection


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        api = self.server.api
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        key = self.headers.get("Idempotency-Key")
        call = VendorCall(self.path, key, self.headers.get("Authorization"), body)
        call.headers = {name.lower(): value for name, value in self.headers.items()}
        failure = api._record(call)
        if failure == "timeout":
            time.sleep(2.5)
        elif failure == "drop":
            self.close_connection = True
            return
        if api.slow:
            time.sleep(api.slow)
        if isinstance(failure, int):
            self._answer(failure, {"message": f"vendor says no ({failure})"})
            return
        call.succeeded = True
        self._answer(200, {"test_url": f"https://tests.example/t/{key}", "ok": True})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.server.api.cookie:
                self.send_header("Set-Cookie", self.server.api.cookie)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass
