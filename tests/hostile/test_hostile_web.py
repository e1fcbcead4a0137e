"""Hostile clients of `dispatcher web`: slow senders, oversized and undecodable bodies, floods.

Given the real `dispatcher web` process (uvicorn, over real sockets, on a real Redis), with
sub-second header and body deadlines; when a client sends its headers or its body a few bytes
at a time, a body over the limit (declared or chunked), a lone surrogate, or 40 bodies of
1 MiB at once; then it is disconnected or refused (408, 413, 400, 503) within the deadline,
the server's memory stays bounded, Redis holds nothing new, and a signed delivery still works.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis

from dispatcher.settings import ConfigError, Settings, load_settings
from dispatcher.web.app import create_app, server_config
from dispatcher.web.kombo_delivery import MAX_BODY_BYTES, SIGNATURE_HEADER
from dispatcher.web.webhook import WEBHOOK_PATH
from support import order_payload
from support.web import (
    BODY_TIMEOUT,
    INTEGRATION,
    SLACK,
    Web,
    assert_still_serves,
    connect,
    deployed_web,
    forever,
    read_answer,
    trickle,
)
from support.webhook import AppClient, make_app, make_ledger, signed

pytestmark = pytest.mark.redis

HEADER_TIMEOUT = 0.5


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with deployed_web(
        redis_url,
        tmp_path_factory.mktemp("web"),
        DISPATCHER_WEB_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        DISPATCHER_WEB_BODY_TIMEOUT=str(BODY_TIMEOUT),
    ) as server:
        yield server


def keys(redis: Redis) -> set[bytes]:
    return set(redis.scan_iter(count=1000))


# -- slow senders ---------------------------------------------------------------------------


def test_a_connection_that_never_sends_is_closed_after_the_header_timeout(
    web: Web, redis: Redis
) -> None:
    with connect(web) as sock:
        took = trickle(sock, forever(b""), give_up=HEADER_TIMEOUT + 5)
    assert took is not None, "an idle connection was kept open"
    assert took < HEADER_TIMEOUT + SLACK
    assert_still_serves(web, redis)


def test_a_slowloris_sending_headers_a_line_at_a_time_is_disconnected(
    web: Web, redis: Redis
) -> None:
    before = keys(redis)
    with connect(web) as sock:
        sock.sendall(f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\n".encode())
        took = trickle(sock, (f"X-Slow-{n}: a\r\n".encode() for n in range(10**6)), 10)
    # Each line arrived well within any idle timeout: only a deadline on the whole header
    # section ends it.
    assert took is not None, "a slowloris kept its connection open for 10 s"
    assert took < HEADER_TIMEOUT + SLACK
    assert keys(redis) == before
    assert "request headers not complete within 0.5 s" in web.log.read_text()
    assert_still_serves(web, redis)


def test_a_slowloris_on_a_kept_alive_connection_is_disconnected(web: Web, redis: Redis) -> None:
    """uvicorn's keep-alive timeout is cancelled by any byte: the header deadline is not."""
    with connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: dispatcher\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        took = trickle(sock, forever(b"X-Slow: a\r\n"), give_up=10)
    assert took is not None
    assert took < HEADER_TIMEOUT + SLACK


def test_a_slow_body_is_answered_408_and_disconnected_within_the_body_timeout(
    web: Web, redis: Redis
) -> None:
    before = keys(redis)
    with connect(web) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\nContent-Length: 5000\r\n"
            f"{SIGNATURE_HEADER}: forged\r\nContent-Type: application/json\r\n\r\n".encode()
        )
        took = trickle(sock, forever(b'{"pad": "'), give_up=10)
        assert took is not None, "a slow body kept its connection open for 10 s"
    assert took < BODY_TIMEOUT + SLACK
    assert keys(redis) == before
    assert "body not complete within 0.5 s (DISPATCHER_WEB_BODY_TIMEOUT)" in web.log.read_text()
    assert_still_serves(web, redis)


def test_the_408_answer_names_the_deadline(web: Web) -> None:
    with connect(web) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\nContent-Length: 100\r\n"
            f"{SIGNATURE_HEADER}: forged\r\n\r\n{{".encode()
        )
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b'{"message":"body not complete in time"}')


def test_a_slow_body_to_a_route_that_never_reads_it_is_disconnected_after_the_answer(
    web: Web,
) -> None:
    """/healthz answers without reading a body; the body trickling in after must not keep
    the connection (each byte cancels uvicorn's keep-alive timer)."""
    with connect(web) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: dispatcher\r\nContent-Length: 100000\r\n\r\n")
        took = trickle(sock, forever(b"x"), give_up=10)
    assert took is not None, "a body trickling in after the answer kept the connection open"
    assert took < SLACK


# -- oversized bodies -----------------------------------------------------------------------


def test_a_declared_body_over_1_mib_is_413_before_any_of_it_is_sent(web: Web, redis: Redis) -> None:
    with connect(web) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\n"
            f"Content-Length: {64 * MAX_BODY_BYTES}\r\n{SIGNATURE_HEADER}: forged\r\n\r\n".encode()
        )
        answer = read_answer(sock)  # not one byte of the body sent
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"message":"body larger than 1 MiB"}')
    assert_still_serves(web, redis)


def test_a_chunked_body_over_1_mib_is_413_without_the_server_reading_it_all(
    web: Web, redis: Redis
) -> None:
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with connect(web) as sock:
        sock.sendall(
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\nTransfer-Encoding: chunked\r\n"
            f"{SIGNATURE_HEADER}: forged\r\n\r\n".encode()
        )
        try:
            while sent < 64 * MAX_BODY_BYTES:
                sock.sendall(frame)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413 ")
    # 1 MiB read, plus what the kernel's socket buffers took before the server hung up.
    assert sent < 24 * MAX_BODY_BYTES
    assert_still_serves(web, redis)


def test_40_concurrent_unsigned_1_mib_bodies_stay_within_the_body_budget(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    """Without a budget each stranger's body was read whole (and copied) before its
    signature was checked: 40 of them raised the server's peak RSS by ~47 MiB. With the
    default 8 MiB budget the flood is refused (503) once 8 MiB of unverified bodies are in
    flight: ~16 MiB, the rest being uvicorn's read buffers (up to ~320 KiB a connection)."""
    body = b"x" * (MAX_BODY_BYTES - 1024)
    with deployed_web(redis_url, tmp_path) as web:
        assert_still_serves(web, redis)  # warm: the first delivery imports and allocates
        before = web.peak_rss_kib()
        barrier = threading.Barrier(40)
        statuses: list[int] = []

        def send() -> None:
            with connect(web) as sock:
                barrier.wait()
                head = (
                    f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: dispatcher\r\n"
                    f"Content-Length: {len(body)}\r\n{SIGNATURE_HEADER}: forged\r\n"
                    "Connection: close\r\n\r\n"
                )
                # A refusal (503) may close the connection before the body is all sent.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(head.encode() + body)
                answer = read_answer(sock)
            statuses.append(int(answer.split(b" ", 2)[1]))

        threads = [threading.Thread(target=send) for _ in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        growth_mib = (web.peak_rss_kib() - before) / 1024
        print(f"peak RSS growth: {growth_mib:.1f} MiB, statuses {sorted(statuses)}")
        assert_still_serves(web, redis)
    assert sorted(set(statuses)) == [401, 503], statuses
    assert len(statuses) == 40
    assert growth_mib < 28, f"peak RSS grew {growth_mib:.1f} MiB"


def test_connections_beyond_the_limit_are_answered_503(
    redis_url: str, redis: Redis, tmp_path: Path
) -> None:
    with deployed_web(redis_url, tmp_path, DISPATCHER_WEB_MAX_CONNECTIONS="3") as web:
        held = [connect(web) for _ in range(3)]
        try:
            with connect(web) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: dispatcher\r\n\r\n")
                assert read_answer(sock).startswith(b"HTTP/1.1 503 ")
        finally:
            for sock in held:
                sock.close()


# -- undecodable bodies ---------------------------------------------------------------------


def _event(order_id: str = "ORD_OK", **overrides: Any) -> dict[str, Any]:
    data = {**order_payload(order_id), "integration_id": INTEGRATION}
    return {"id": "evt_hostile", "type": "assessment:order-received", "data": data, **overrides}


def _escaped(event: dict[str, Any]) -> bytes:
    # ensure_ascii writes a lone surrogate as the escape \ud800, as any JSON encoder may.
    return json.dumps(event, ensure_ascii=True).encode()


UNDECODABLE = [
    pytest.param(_escaped(_event("\ud800")), id="order-id-lone-surrogate-escape"),
    pytest.param(_escaped(_event("ORD_\udfff_1")), id="order-id-lone-low-surrogate"),
    pytest.param(
        _escaped(_event("ORD_OK")).replace(b"ORD_OK", b"ORD_\xed\xa0\x80"),
        id="order-id-surrogate-as-utf8-bytes",
    ),
    pytest.param(_escaped(_event("ORD_OK")).replace(b"ORD_OK", b"ORD_\xff"), id="not-utf8"),
    pytest.param(_escaped(_event(id="evt_\ud800")), id="event-id"),
    pytest.param(
        _escaped({**_event(), "data": {**_event()["data"], "integration_id": "acme:\ud800"}}),
        id="integration-id",
    ),
    pytest.param(_escaped(_event()).replace(b'"Zo\\u00eb"', b'"Zo\\udc00"'), id="candidate-name"),
    pytest.param('{"a": 1}'.encode("utf-16"), id="utf-16"),
]


@pytest.mark.parametrize("body", UNDECODABLE)
def test_an_undecodable_delivery_is_400_and_writes_nothing(
    web: Web, redis: Redis, body: bytes
) -> None:
    before = keys(redis)
    answer = httpx.post(web.url + WEBHOOK_PATH, content=body, headers=signed(body), timeout=10)
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert message.startswith("body is not valid JSON: ")
    assert "\n" not in message
    assert keys(redis) == before
    assert_still_serves(web, redis)


# -- properties: any ids and names, never a 500 ---------------------------------------------

# Separators, control characters, unicode beyond the BMP; surrogates come separately (below).
_HOSTILE = st.text(
    st.one_of(
        st.sampled_from(":/\\%{}\"'\r\n\t\x00\x1b\u2028\ufeff"),
        st.characters(codec="utf-8", categories=["Cc", "Zl", "Zp", "Lo", "So", "Mn"]),
        st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
        st.characters(min_codepoint=32, max_codepoint=126),
    ),
    min_size=1,
    max_size=24,
)
_FIELDS = ("order_id", "integration_id", "name", "event_id")
# Half the examples get one lone surrogate, somewhere in one field.
_SURROGATE = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(_FIELDS), st.integers(0, 24), st.characters(categories=["Cs"])),
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.fixed_dictionaries(dict.fromkeys(_FIELDS, _HOSTILE)), surrogate=_SURROGATE)
def test_hostile_ids_and_names_are_answered_never_500_and_400_writes_nothing(
    redis: Redis, values: dict[str, str], surrogate: tuple[str, int, str] | None
) -> None:
    """Whatever the ids and names hold, the receiver answers 200, 400 or 422, never 500; a
    400 writes nothing, and a lone surrogate anywhere is a 400."""
    if surrogate is not None:
        field, at, char = surrogate
        values[field] = values[field][:at] + char + values[field][at:]
    redis.flushdb()
    client = AppClient(make_app(make_ledger(redis)))
    event = _event(values["order_id"], id=values["event_id"])
    event["data"]["integration_id"] = values["integration_id"]
    event["data"]["candidate"]["first_name"] = values["name"]
    event["data"]["job"]["hiring_team"][0]["last_name"] = values["name"]
    body = _escaped(event)
    answer = client.post(WEBHOOK_PATH, content=body, headers=signed(body))
    assert answer.status_code in (200, 400, 422), answer.text
    if answer.status_code == 400:
        assert "\n" not in answer.json()["message"]
        assert keys(redis) == set()
    if surrogate is not None:
        assert answer.status_code == 400
    elif answer.status_code == 200:
        assert answer.json() == {"status": "enqueued", "order_id": values["order_id"]}


# -- the configuration ----------------------------------------------------------------------


def test_server_config_carries_the_settings(redis: Redis) -> None:
    settings_ = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DISPATCHER_WEB_HEADER_TIMEOUT=3,
        DISPATCHER_WEB_MAX_CONNECTIONS=7,
    )
    config = server_config(create_app(settings_, redis), settings_, host="127.0.0.1", port=1)
    assert config.limit_concurrency == 7
    assert isinstance(config.http, type)
    assert config.http.header_timeout == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISPATCHER_WEB_HEADER_TIMEOUT", "0"),
        ("DISPATCHER_WEB_BODY_TIMEOUT", "-1"),
        ("DISPATCHER_WEB_BODY_BUDGET", "1000"),  # below one 1 MiB body
        ("DISPATCHER_WEB_MAX_CONNECTIONS", "0"),
    ],
)
def test_bad_web_settings_are_one_line_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        load_settings(_env_file=None, **{name: value})
