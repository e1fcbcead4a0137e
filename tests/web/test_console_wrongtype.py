"""The console's own keys of the wrong type, against a real `dispatcher web` (issue 22 item 7).

A client's login count (``{ns}:console-login:{client}``) or a session's key
(``{ns}:console-session:{nonce}``) holding another type made the console answer "503: Redis
does not answer" and log a warning that named no key. These keys are one per client or
session: no list names them without a SCAN, so the console names them when it meets them:
one ERROR line naming the key (a session's nonce cut short), a 503 page saying a Redis key
has the wrong type, and ``dispatcher_redis_broken_keys`` counting it until it is repaired.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from dispatcher.store.keys import Keys
from support.console import TOKEN, csrf_of, login
from support.web import Web, deployed_web, samples

pytestmark = pytest.mark.redis

WRONG_TYPE_PAGE = "503: a Redis key has the wrong type: the server's log names it"


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with deployed_web(
        redis_url, tmp_path_factory.mktemp("console-wrongtype"), DISPATCHER_CONSOLE_TOKEN=TOKEN
    ) as web:
        yield web


def _broken_keys(web: Web) -> float:
    metrics = samples(httpx.get(f"{web.url}/metrics", timeout=30).text)
    return metrics[("dispatcher_redis_broken_keys", ())]


def _error_lines(web: Web, mark: str) -> list[str]:
    return [line for line in web.log.read_text().splitlines() if "ERROR" in line and mark in line]


def test_a_wrong_type_login_count_is_named_and_counted(web: Web, redis: Redis) -> None:
    key = Keys(web.namespace).console_login("127.0.0.1")
    # Given someone who can write Redis planting this client's login count as a hash
    redis.hset(key, "planted", "1")
    with httpx.Client(base_url=web.url, timeout=10) as client:
        # When the client logs in
        answer = login(client, TOKEN)
    # Then the page says what is wrong (not that Redis is away)...
    assert answer.status_code == 503
    assert answer.text.strip() == WRONG_TYPE_PAGE
    # ...one ERROR line names the key...
    problem = f"key {key} holds a hash where a string belongs: repair or delete it"
    assert len(_error_lines(web, problem)) == 1, web.log.read_text()
    # ...and /metrics counts it, until it is repaired.
    assert _broken_keys(web) == 1
    redis.delete(key)
    assert _broken_keys(web) == 0
    with httpx.Client(base_url=web.url, timeout=10) as client:
        assert login(client, TOKEN).status_code == 303


def test_a_wrong_type_session_key_is_named_without_the_nonce(web: Web, redis: Redis) -> None:
    keys = Keys(web.namespace)
    with httpx.Client(base_url=web.url, timeout=10) as operator:
        assert login(operator, TOKEN).status_code == 303
        page = operator.get("/console/integrations")
        assert page.status_code == 200
        csrf = csrf_of(page.text)
        (key,) = [k.decode() for k in redis.scan_iter(match=keys.console_session("*"))]
        nonce = key.removeprefix(keys.console_session(""))
        # Given the operator's session key replaced by a hash
        redis.delete(key)
        redis.hset(key, "planted", "1")
        # When the operator opens a page or posts a form
        answers = [
            operator.get("/console/integrations"),
            operator.post("/console/integrations", data={"pause": "acme:AAA", "csrf": csrf}),
        ]
    # Then each answer says a key has the wrong type...
    for answer in answers:
        assert answer.status_code == 503
        assert answer.text.strip() == WRONG_TYPE_PAGE
    # ...the log names the key with the session's nonce cut short (never in full)...
    shown = f"key {keys.console_session(nonce[:6])}… holds a hash where a string belongs"
    assert len(_error_lines(web, shown)) == 2, web.log.read_text()
    assert nonce not in web.log.read_text()
    # ...and /metrics counts it once, until it is deleted.
    assert _broken_keys(web) == 1
    redis.delete(key)
    assert _broken_keys(web) == 0


def test_a_wrong_type_device_count_is_named_without_the_nonce(web: Web, redis: Redis) -> None:
    keys = Keys(web.namespace)
    with httpx.Client(base_url=web.url, timeout=10) as operator:
        # Given a browser that logged in before (its device cookie: its own login count)...
        assert login(operator, TOKEN).status_code == 303
        assert operator.post("/console/logout", data={"csrf": csrf_of(operator.get(
            "/console/integrations").text)}).status_code == 303  # fmt: skip
        prefix = keys.console_login("device:")
        assert login(operator, "wrong-token").status_code == 403
        (key,) = [k.decode() for k in redis.scan_iter(match=f"{prefix}*")]
        nonce = key.removeprefix(prefix)
        # ...when its count is planted as a list
        redis.delete(key)
        redis.rpush(key, "planted")
        answer = login(operator, TOKEN)
    # Then the page and one ERROR line name the wrong type, the device's nonce cut short.
    assert answer.status_code == 503 and answer.text.strip() == WRONG_TYPE_PAGE
    shown = f"key {prefix}{nonce[:6]}… holds a list where a string belongs"
    assert len(_error_lines(web, shown)) == 1, web.log.read_text()
    assert nonce not in web.log.read_text()
    assert _broken_keys(web) == 1
    redis.delete(key)
    assert _broken_keys(web) == 0
