"""Support for the tests of `dispatcher web`: an app on a real socket (uvicorn in a thread),
the real `dispatcher web` process with the webhook receiver on, raw-socket clients (slow
senders), and the metrics exposition read back."""

from __future__ import annotations

import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from dispatcher.store.keys import Keys
from dispatcher.web.webhook import WEBHOOK_PATH
from support import dispatcher_env, free_port, order_payload, web_process
from support.webhook import SECRET, event_body, signed

INTEGRATION = "acme:AAA"
BODY_TIMEOUT = 0.5
# What a loaded 2-core CI machine may add to a deadline before the server acts on it.
SLACK = 2.0


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread); yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serving_client(app: Any) -> Iterator[httpx.Client]:
    """The app on a real socket (:func:`serving`), and a client for it."""
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@dataclass
class Web:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    namespace: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def peak_rss_kib(self) -> int:
        """The server's peak resident memory so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc")


@contextmanager
def deployed_web(redis_url: str, tmp: Path, **env: str) -> Iterator[Web]:
    """`dispatcher web` as deployed: a process of its own (:func:`support.web_process`), the
    webhook receiver on, a namespace of its own; its log must hold no traceback."""
    namespace = f"hw{uuid.uuid4().hex[:8]}"
    log = tmp / f"web-{namespace}.log"
    values = {
        "KOMBO_WEBHOOK_SECRET": SECRET,
        # No Kombo here: orders are dispatched unconfirmed (tests/web/test_webhook_replay.py
        # confirms them with the simulator).
        "DISPATCHER_WEBHOOK_CONFIRM": "false",
        "DISPATCHER_NAMESPACE": namespace,
        "DISPATCHER_HANDLERS": "log",
        **env,
    }
    with web_process(dispatcher_env(redis_url, **values), log) as (proc, port):
        yield Web(proc, port, log, namespace)
    assert "Traceback" not in log.read_text(), log.read_text()


def assert_still_serves(web: Web, redis: Redis) -> None:
    """A delivery signed by Kombo is still answered, and its order enqueued."""
    order_id = f"AFTER_{uuid.uuid4().hex[:12]}"
    body = event_body(order_payload(order_id), INTEGRATION)
    answer = httpx.post(web.url + WEBHOOK_PATH, content=body, headers=signed(body), timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "enqueued", "order_id": order_id}
    assert redis.hexists(Keys(web.namespace).seen(INTEGRATION), order_id)


def connect(web: Web) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (reading what it answered first)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        return True
    return True


def trickle(sock: socket.socket, pieces: Iterator[bytes], give_up: float) -> float | None:
    """Send a piece every 0.1 s until the server closes the connection: how long that took
    (None if it was still open after ``give_up`` seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < give_up:
        if closed_by_server(sock):
            return time.monotonic() - started
        try:
            sock.sendall(next(pieces))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def forever(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data
