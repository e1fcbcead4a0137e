"""Every body has one deadline and one budget, whatever its route (issue 22, V3, W15, W9).

Given the real `dispatcher web` process (console and results API on, at most 12 connections,
a 0.5 s body deadline); when 10 clients trickle bodies to ``POST /console/login``
(unauthenticated) and the results API's PUT (authenticated); then each is answered 408 and
disconnected within the deadline, and ``/healthz`` and the webhook answer again. A client
that goes away mid-body is one DEBUG line, never a traceback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from support.web import (
    BODY_TIMEOUT,
    SLACK,
    Web,
    assert_still_serves,
    connect,
    deployed_web,
    forever,
    trickle,
)

pytestmark = pytest.mark.redis

CONSOLE_TOKEN = "console-token-for-body-tests-01"
API_TOKEN = "results-api-token-for-body-tests-0123456789"
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with deployed_web(
        redis_url,
        tmp_path_factory.mktemp("bodies"),
        DISPATCHER_CONSOLE_TOKEN=CONSOLE_TOKEN,
        DISPATCHER_API_TOKEN=API_TOKEN,
        DISPATCHER_WEB_BODY_TIMEOUT=str(BODY_TIMEOUT),
        DISPATCHER_WEB_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        DISPATCHER_LOG_LEVEL="DEBUG",
    ) as server:
        yield server


def _head(path: str, method: str = "POST", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: dispatcher", "Content-Length: 5000"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


LOGIN = _head("/console/login", **{"Content-Type": "application/x-www-form-urlencoded"})
RESULT = _head(
    "/orders/acme:AAA/O1/result",
    "PUT",
    Authorization=f"Bearer {API_TOKEN}",
    **{"Content-Type": "application/json"},
)


@pytest.mark.parametrize("head", [LOGIN, RESULT], ids=["console-login", "results-put"])
def test_a_slow_body_is_answered_408_within_the_body_timeout_on_every_route(
    web: Web, head: bytes
) -> None:
    with connect(web) as sock:
        sock.sendall(head)
        sock.settimeout(5)
        took = trickle(sock, forever(b"a"), give_up=10)
    assert took is not None, "a slow body kept its connection open for 10 s"
    assert took < BODY_TIMEOUT + SLACK
    assert "body not complete within 0.5 s (DISPATCHER_WEB_BODY_TIMEOUT)" in web.log.read_text()


def test_trickled_console_and_results_bodies_cannot_hold_the_server(web: Web, redis: Redis) -> None:
    """V3: with every connection held by a trickled body, /healthz and the webhook answered
    503 for as long as the attacker liked. Now each is cut at the body deadline."""
    socks: list[socket.socket] = []
    closed: list[float | None] = [None] * (MAX_CONNECTIONS - 1)
    try:
        for n in range(MAX_CONNECTIONS - 1):
            sock = connect(web)
            sock.sendall(LOGIN if n % 2 else RESULT)
            socks.append(sock)

        def hold(n: int) -> None:
            closed[n] = trickle(socks[n], forever(b"a"), give_up=10)

        threads = [threading.Thread(target=hold, args=(n,)) for n in range(len(socks))]
        for thread in threads:
            thread.start()
        # Held: one connection left, taken by this probe; the next is refused.
        for thread in threads:
            thread.join(15)
    finally:
        for sock in socks:
            sock.close()
    assert all(took is not None and took < BODY_TIMEOUT + SLACK for took in closed), closed
    assert httpx.get(f"{web.url}/healthz", timeout=5).status_code == 200
    assert_still_serves(web, redis)


@pytest.mark.parametrize(
    ("head", "request_line"),
    [(LOGIN, "POST /console/login"), (RESULT, "PUT /orders/acme:AAA/O1/result")],
    ids=["console-login", "results-put"],
)
def test_a_client_going_away_mid_body_is_one_debug_line_not_a_traceback(
    web: Web, head: bytes, request_line: str
) -> None:
    before = len(web.log.read_text().splitlines())
    with connect(web) as sock:
        sock.sendall(head + b"csrf=")
    # Each route's own line, naming the request (the results API used to answer a silent
    # 400 to nobody instead).
    said = f"{request_line} from 127.0.0.1:"
    deadline = time.monotonic() + 10
    while "went away before its body was complete" not in _new(web, before):
        assert time.monotonic() < deadline, _new(web, before)
        time.sleep(0.05)
    new = _new(web, before)
    assert "Traceback" not in new and "ERROR" not in new, new
    lines = [line for line in new.splitlines() if "went away" in line]
    assert len(lines) == 1 and said in lines[0] and "DEBUG" in lines[0], lines


def _new(web: Web, skip: int) -> str:
    return "\n".join(Path(web.log).read_text().splitlines()[skip:])
