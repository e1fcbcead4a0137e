"""The console's sessions and login limit against a real `dispatcher web` (issue 22, W8, W10).

Given the real `dispatcher web` process on a real Redis, with the console on; when an
operator logs out, a client claims addresses in X-Forwarded-For, an IPv6 client takes a new
address per attempt, or someone fails logins from the operator's address (or from many);
then the captured cookie is dead (pages and POSTs), the forwarded address counts only from a
configured proxy, a /64 is one client, and an operator's browser still logs in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from dispatcher.store.keys import Keys
from support.console import csrf_of, login
from support.web import Web, connect, deployed_web, read_answer

pytestmark = pytest.mark.redis

TOKEN = "console-token-for-session-tests"
ATTEMPTS = 3


def console(redis_url: str, tmp: Path, **env: str) -> Iterator[Web]:
    with deployed_web(
        redis_url,
        tmp,
        DISPATCHER_CONSOLE_TOKEN=TOKEN,
        DISPATCHER_CONSOLE_LOGIN_ATTEMPTS=str(ATTEMPTS),
        **env,
    ) as web:
        yield web


@pytest.fixture(scope="module")
def direct(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """No proxy configured (the default)."""
    yield from console(redis_url, tmp_path_factory.mktemp("direct"))


@pytest.fixture(scope="module")
def proxied(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    """Behind a reverse proxy on 127.0.0.1 (DISPATCHER_TRUSTED_PROXIES)."""
    yield from console(
        redis_url, tmp_path_factory.mktemp("proxied"), DISPATCHER_TRUSTED_PROXIES="127.0.0.1"
    )


def test_a_session_cookie_is_dead_after_logout_for_pages_and_posts(direct: Web) -> None:
    with httpx.Client(base_url=direct.url, timeout=10) as operator:
        assert login(operator, TOKEN).status_code == 303
        page = operator.get("/console/integrations")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        captured = dict(operator.cookies)
        answer = operator.post("/console/logout", data={"csrf": csrf})
        assert answer.status_code == 303
    with httpx.Client(base_url=direct.url, timeout=10, cookies=captured) as thief:
        page = thief.get("/console/integrations")
        assert page.status_code == 303 and page.headers["location"] == "/"
        assert thief.get("/console/live").status_code == 401
        answer = thief.post("/console/integrations", data={"pause": "acme:AAA", "csrf": csrf})
        assert answer.status_code == 403
        answer = thief.post("/console/failures/retry", data={"all": "1", "csrf": csrf})
        assert answer.status_code == 403


def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(direct: Web, redis: Redis) -> None:
    with httpx.Client(base_url=direct.url, timeout=10) as attacker:
        codes = [
            login(attacker, "guess", **{"X-Forwarded-For": f"198.51.100.{n}"}).status_code
            for n in range(ATTEMPTS + 2)
        ]
    assert codes == [403] * ATTEMPTS + [429, 429]
    keys = Keys(direct.namespace)
    assert redis.exists(keys.console_login("127.0.0.1"))
    assert not redis.exists(keys.console_login("198.51.100.0"))
    redis.delete(keys.console_login("127.0.0.1"), keys.console_login_all)


def test_a_trusted_proxy_names_the_client_and_an_ipv6_64_is_one_client(
    proxied: Web, redis: Redis
) -> None:
    keys = Keys(proxied.namespace)
    with httpx.Client(base_url=proxied.url, timeout=10) as attacker:
        codes = [
            login(attacker, "guess", **{"X-Forwarded-For": f"2001:db8:1:2::{n:x}"}).status_code
            for n in range(1, ATTEMPTS + 3)
        ]
    assert codes == [403] * ATTEMPTS + [429, 429]
    assert redis.exists(keys.console_login("2001:db8:1:2::/64"))
    # Another address, through the proxy: its own count.
    with httpx.Client(base_url=proxied.url, timeout=10) as other:
        answer = login(other, "guess", **{"X-Forwarded-For": "203.0.113.9"})
    assert answer.status_code == 403
    redis.delete(*redis.keys(f"{proxied.namespace}:console-login*"))


def test_someone_elses_failures_never_lock_out_an_operators_browser(
    proxied: Web, redis: Redis
) -> None:
    operator_address = {"X-Forwarded-For": "192.0.2.10"}
    with httpx.Client(base_url=proxied.url, timeout=10) as operator:
        assert login(operator, TOKEN, **operator_address).status_code == 303
        operator.post("/console/logout", data={"csrf": csrf_of(operator.get("/").text)})
        # An attacker at the operator's address locks the address...
        with httpx.Client(base_url=proxied.url, timeout=10) as attacker:
            for _ in range(ATTEMPTS + 1):
                last = login(attacker, "guess", **operator_address)
            assert last.status_code == 429
            # ... and, from many addresses, the global cap.
            for n in range(10 * ATTEMPTS + 1):
                last = login(attacker, "guess", **{"X-Forwarded-For": f"198.51.100.{n}"})
            assert last.status_code == 429
            fresh = login(attacker, "guess", **{"X-Forwarded-For": "203.0.113.77"})
            assert fresh.status_code == 429, "the global cap did not hold"
        # The operator's browser, which logged in before, is not locked out by any of it.
        assert login(operator, TOKEN, **operator_address).status_code == 303
        assert operator.get("/console/integrations").status_code == 200
    redis.delete(*redis.keys(f"{proxied.namespace}:console-login*"))


def test_redirects_never_reflect_the_host_header(direct: Web) -> None:
    hostile = {"Host": "evil.example"}
    with httpx.Client(base_url=direct.url, timeout=10) as client:
        answer = client.get("/healthz/", headers=hostile)
        assert answer.status_code == 307
        assert answer.headers["location"] == "/healthz"
        answer = client.get("/console/live/?a=1", headers=hostile)
        assert answer.status_code == 307
        assert answer.headers["location"] == "/console/live?a=1"
        assert login(client, "guess", **hostile).status_code == 403
        answer = client.get("/console/integrations", headers=hostile)
        assert answer.status_code == 303 and answer.headers["location"] == "/"
    # A path that would read as another host (a protocol-relative Location) is not redirected.
    with connect(direct) as sock:
        sock.sendall(
            b"GET //evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
        )
        assert read_answer(sock).startswith(b"HTTP/1.1 404 ")


def test_one_address_hammering_on_cannot_spend_the_global_cap(proxied: Web, redis: Redis) -> None:
    with httpx.Client(base_url=proxied.url, timeout=10) as attacker:
        for _ in range(10 * ATTEMPTS + 2):
            last = login(attacker, "guess", **{"X-Forwarded-For": "198.51.100.200"})
        assert last.status_code == 429
    # A browser that never logged in, at another address, still gets its attempts.
    with httpx.Client(base_url=proxied.url, timeout=10) as newcomer:
        assert login(newcomer, TOKEN, **{"X-Forwarded-For": "192.0.2.99"}).status_code == 303
    redis.delete(*redis.keys(f"{proxied.namespace}:console-login*"))
