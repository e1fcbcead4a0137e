from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError, KomboLimitError
from dispatcher.kombo.pages import InvalidPageError
from dispatcher.kombo.results import build_result
from dispatcher.settings import ConfigError, load_settings
from support import order_payload

API_KEY = "sk_test_do_not_leak_9f8e7d"
INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"


def envelope(code: str | None, message: str, status: int, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={
            "status": "error",
            "error": {"code": code, "title": None, "message": message, "log_url": "https://log/1"},
        },
        headers=headers,
    )


def page(orders: list[dict[str, Any]], next_cursor: str | None = None) -> httpx.Response:
    return httpx.Response(
        200, json={"status": "success", "data": {"next": next_cursor, "results": orders}}
    )


class Recorder:
    """A transport that answers from a script of responses and records the requests."""

    def __init__(self, *responses: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.responses.pop(0)
        return answer(request) if callable(answer) else answer


def client_for(recorder: Recorder, sleeps: list[float] | None = None, **kw: Any) -> KomboClient:
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        if sleeps is not None:
            sleeps.append(seconds)

    return KomboClient(
        API_KEY,
        "https://kombo.test/v1",
        transport=httpx.MockTransport(recorder),
        sleep=sleep,
        clock=lambda: clock[0],
        **kw,
    )


def test_get_orders_sends_auth_integration_and_every_filter() -> None:
    recorder = Recorder(page([order_payload("A")], "c2"))
    client = client_for(recorder)
    result = client.get_orders(
        INTEGRATION,
        statuses=["OPEN", "COMPLETED"],
        ids=["A", "B"],
        created_after=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        page_size=250,
        cursor="c1",
    )
    request = recorder.requests[0]
    assert request.url.path == "/v1/assessment/orders"
    assert dict(request.url.params) == {
        "statuses": "OPEN,COMPLETED",
        "ids": "A,B",
        "created_after": "2026-01-02T03:04:05.678Z",
        "page_size": "250",
        "cursor": "c1",
    }
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["X-Integration-Id"] == INTEGRATION
    assert [o.id for o in result.orders] == ["A"]
    assert result.next == "c2"


def test_iterating_pages_follows_the_cursor_and_keeps_the_filters() -> None:
    recorder = Recorder(
        page([order_payload("A")], "c2"), page([order_payload("B")], "c3"), page([], None)
    )
    pages = list(client_for(recorder).iter_order_pages(INTEGRATION, page_size=1))
    assert [[o.id for o in p.orders] for p in pages] == [["A"], ["B"], []]
    params = [dict(r.url.params) for r in recorder.requests]
    assert [p.get("cursor") for p in params] == [None, "c2", "c3"]
    assert all(p["statuses"] == "OPEN" and p["page_size"] == "1" for p in params)


def test_deprecated_open_endpoint() -> None:
    raw = order_payload("A")
    del raw["status"]
    recorder = Recorder(page([raw], "n"), page([], None))
    pages = list(client_for(recorder).iter_open_order_pages(INTEGRATION, page_size=5))
    assert recorder.requests[0].url.path == "/v1/assessment/orders/open"
    assert dict(recorder.requests[1].url.params) == {"page_size": "5", "cursor": "n"}
    assert pages[0].orders[0].status is None


def test_error_envelope_becomes_a_kombo_error() -> None:
    recorder = Recorder(envelope("PLATFORM.INTEGRATION_NOT_FOUND", "No such integration", 404))
    with pytest.raises(KomboError) as info:
        client_for(recorder).get_orders(INTEGRATION)
    error = info.value
    assert (error.code, error.message, error.log_url, error.status_code) == (
        "PLATFORM.INTEGRATION_NOT_FOUND",
        "No such integration",
        "https://log/1",
        404,
    )
    assert str(error) == (
        f"integration {INTEGRATION}: PLATFORM.INTEGRATION_NOT_FOUND: No such integration"
    )
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "response",
    [
        envelope("PLATFORM.AUTHENTICATION_INVALID", "bad key", 401),
        envelope("PLATFORM.INPUT_INVALID", "bad page_size", 400),
        # The code decides, not the status: an input error is not retried even as a 5xx.
        envelope("PLATFORM.INPUT_INVALID", "odd", 503),
    ],
)
def test_authentication_and_input_errors_are_not_retried(response: httpx.Response) -> None:
    recorder = Recorder(response, page([]))
    with pytest.raises(KomboError):
        client_for(recorder).get_orders(INTEGRATION)
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [
        envelope("PLATFORM.RATE_LIMIT_EXCEEDED", "slow down", 429),
        envelope("PLATFORM.CONCURRENCY_LIMIT_EXCEEDED", "too many", 429),
        envelope("PLATFORM.UNKNOWN_ERROR", "oops", 500),
        envelope("REMOTE.SERVICE_UNAVAILABLE", "ats down", 503),
        envelope(None, "gateway", 502),
        httpx.Response(200, content=b'{"status": "succ'),
    ],
)
def test_transient_failures_are_retried_with_backoff(failure: httpx.Response) -> None:
    sleeps: list[float] = []
    recorder = Recorder(failure, failure, page([order_payload("A")]))
    result = client_for(recorder, sleeps).get_orders(INTEGRATION)
    assert [o.id for o in result.orders] == ["A"]
    assert len(recorder.requests) == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0  # full jitter, doubling


def test_network_errors_and_timeouts_are_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    recorder = Recorder(refuse, timeout, page([]))
    assert client_for(recorder).get_orders(INTEGRATION).orders == []
    assert len(recorder.requests) == 3


def test_retry_after_is_honoured() -> None:
    sleeps: list[float] = []
    recorder = Recorder(
        envelope("PLATFORM.RATE_LIMIT_EXCEEDED", "slow down", 429, **{"Retry-After": "7"}),
        page([]),
    )
    client_for(recorder, sleeps).get_orders(INTEGRATION)
    assert sleeps == [7.0]


def test_retrying_stops_within_the_budget() -> None:
    sleeps: list[float] = []
    busy = envelope("PLATFORM.RATE_LIMIT_EXCEEDED", "slow down", 429, **{"Retry-After": "4"})
    recorder = Recorder(*([busy] * 20))
    with pytest.raises(KomboError, match="RATE_LIMIT_EXCEEDED"):
        client_for(recorder, sleeps, retry_budget=10).get_orders(INTEGRATION)
    assert sum(sleeps) <= 10
    assert sleeps == [4.0, 4.0]


def test_an_invalid_order_fails_the_page_naming_order_and_field() -> None:
    bad = order_payload("BAD7")
    bad["candidate"]["email"] = None
    recorder = Recorder(page([order_payload("A"), bad]))
    fetched = client_for(recorder).get_orders(INTEGRATION)  # ids checked, the rest on demand
    assert [raw.id for raw in fetched.results] == ["A", "BAD7"]
    with pytest.raises(InvalidPageError) as info:
        fetched.orders  # noqa: B018
    assert info.value.order_id == "BAD7"
    assert info.value.field == "candidate.email"
    assert str(info.value) == (
        f"integration {INTEGRATION}: order BAD7: field candidate.email: "
        "Input should be a valid string"
    )


def test_an_order_without_an_id_is_reported_and_the_rest_of_its_page_kept() -> None:
    # An order without an id is that order's problem (it can never be deduped, so it is
    # never dispatched); until issue 12 it failed its whole page, and so the integration.
    bad = order_payload("X")
    del bad["id"]
    recorder = Recorder(page([order_payload("A"), bad]))
    fetched = client_for(recorder).get_orders(INTEGRATION)
    assert [raw.id for raw in fetched.results] == ["A"]
    assert [str(problem) for problem in fetched.invalid] == ["order #1: field id: Field required"]
    with pytest.raises(InvalidPageError) as info:
        fetched.orders  # noqa: B018
    assert str(info.value) == f"integration {INTEGRATION}: order #1: field id: Field required"


def test_a_page_without_results_is_invalid() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "success", "data": {"next": None}}))
    with pytest.raises(InvalidPageError, match=r"data\.results"):
        client_for(recorder).get_orders(INTEGRATION)


def test_the_api_key_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    recorder = Recorder(
        envelope("PLATFORM.UNKNOWN_ERROR", "oops", 500),
        envelope("PLATFORM.AUTHENTICATION_INVALID", "bad key", 401),
    )
    client = client_for(recorder)
    with pytest.raises(KomboError) as info:
        client.get_orders(INTEGRATION)
    shown = [
        repr(client),
        str(info.value),
        repr(info.value),
        caplog.text,
        json.dumps(vars(info.value)),
    ]
    assert not [text for text in shown if API_KEY in text]
    assert "kombo" in caplog.text.lower()  # the retry was logged, without the key


def test_a_garbled_answer_to_a_successful_write_is_not_retried() -> None:
    from dispatcher.kombo.results import AssessmentResult

    recorder = Recorder(httpx.Response(200, content=b'{"status": "succ'), page([]))
    result = AssessmentResult.model_validate(
        {
            "status": "COMPLETED",
            "result_url": "https://r.example/1",
            "completed_at": "2026-01-01T00:00:00Z",
        }
    )
    warnings = client_for(recorder).put_result(INTEGRATION, "O1", result)
    assert warnings == []
    assert len(recorder.requests) == 1  # the write is not repeated


# Issue 14, items 2 and 3: what a wrong KOMBO_BASE_URL or KOMBO_API_KEY looks like.


def test_a_wrong_base_url_is_said_at_once_with_its_host(caplog: pytest.LogCaptureFixture) -> None:
    from support import free_port

    port = free_port()  # nothing listens there
    clock = [0.0]
    said_before_retrying: list[bool] = []

    def sleep(seconds: float) -> None:
        said_before_retrying.append(any("cannot connect" in r.message for r in caplog.records))
        clock[0] += seconds

    client = KomboClient(
        API_KEY, f"http://127.0.0.1:{port}/v1", sleep=sleep, clock=lambda: clock[0], retry_budget=20
    )
    with caplog.at_level(logging.WARNING, logger="dispatcher.kombo.client"), client:
        for integration in ("lever:a", "lever:b"):
            with pytest.raises(KomboError) as info:
                client.get_orders(integration)
            # The error names the host it could not reach, and why.
            assert f"ConnectError on GET /assessment/orders to 127.0.0.1:{port}: " in str(
                info.value
            )
    assert said_before_retrying and all(said_before_retrying)  # logged before the first retry
    connect = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert connect == [
        f"kombo: cannot connect to 127.0.0.1:{port} (KOMBO_BASE_URL): ConnectError: "
        + connect[0].split("ConnectError: ", 1)[1]
    ]  # once for the outage, not once per request
    assert connect[0].endswith("; retrying for up to 20s")


@pytest.mark.parametrize(
    "response",
    [
        envelope(
            "PLATFORM.AUTHENTICATION_INVALID",
            "The Authorization header must be 'Bearer <your API key>'.",
            401,
        ),
        httpx.Response(401, text="Unauthorized"),
    ],
)
def test_a_refused_key_says_so_naming_the_setting(response: httpx.Response) -> None:
    with pytest.raises(KomboError) as info:
        client_for(Recorder(response)).get_orders(INTEGRATION)
    assert str(info.value).endswith(": the key in KOMBO_API_KEY was refused")
    assert "Authorization header" not in str(info.value)
    assert info.value.status_code == 401
    assert not info.value.retryable


def test_a_client_from_settings_carries_the_key_url_timeout_budget_and_size_limit() -> None:
    # What cli/, poller (poll), web (confirm) and worker (results) each passed by hand.
    settings = load_settings(
        _env_file=None,
        KOMBO_API_KEY=API_KEY,
        KOMBO_BASE_URL="https://kombo.test/v2",
        KOMBO_TIMEOUT=7.5,
        KOMBO_RETRY_BUDGET=12.0,
        DISPATCHER_MAX_RESPONSE_BYTES=2048,
    )
    packages = httpx.Response(200, json={"status": "success", "data": {"packages": []}})
    too_large = httpx.Response(200, json={"status": "success", "data": {"x": "y" * 3000}})
    recorder = Recorder(packages, too_large)
    with KomboClient.from_settings(settings, transport=httpx.MockTransport(recorder)) as client:
        assert client.get_packages(INTEGRATION) == []
        with pytest.raises(KomboLimitError) as caught:
            client.get_packages(INTEGRATION)
        assert client.retry_budget == 12.0
    assert caught.value.code == "RESPONSE_TOO_LARGE"
    request = recorder.requests[0]
    assert str(request.url) == "https://kombo.test/v2/assessment/packages"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.extensions["timeout"] == dict.fromkeys(("connect", "read", "write", "pool"), 7.5)

    # An override wins over the setting; without a key it is KOMBO_API_KEY's one line.
    assert KomboClient.from_settings(settings, retry_budget=0).retry_budget == 0
    with pytest.raises(ConfigError, match="KOMBO_API_KEY"):
        KomboClient.from_settings(load_settings(_env_file=None, KOMBO_API_KEY=""))


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through the client"])
def test_a_cookie_set_answering_one_integration_is_never_sent_for_another(direct: bool) -> None:
    # Kombo's answers are untrusted, and every integration's requests go to one host.
    def answer(request: httpx.Request) -> httpx.Response:
        response = page([])
        response.headers["Set-Cookie"] = f"session={request.headers['X-Integration-Id']}; Path=/"
        return response

    recorder = Recorder(answer, answer, answer)
    client = client_for(recorder)
    client._direct = direct
    client.get_orders("greenhouse:A")
    client.get_orders("lever:B")
    client.get_orders("greenhouse:A")
    assert [r.headers.get("Cookie") for r in recorder.requests] == [None, None, None]


def test_the_direct_path_sends_what_the_client_would() -> None:
    # Order ids are Kombo's: slashes, query and fragment characters, non-ASCII, quoted.
    odd = "a/b?c#d %2F é"
    result = {
        "status": "COMPLETED",
        "result_url": "https://vendor.example/r/1",
        "completed_at": "2026-12-07T10:00:00Z",
    }
    sent: dict[bool, list[httpx.Request]] = {}
    for direct in (True, False):
        recorder = Recorder(page([]), httpx.Response(200, json={"status": "success"}))
        client = client_for(recorder, timeout=7.5)
        client._direct = direct
        client.get_orders(INTEGRATION, statuses=["OPEN"], ids=[odd], cursor="c&d=e")
        client.put_result(INTEGRATION, odd, build_result(**result))
        sent[direct] = recorder.requests
    for direct, through_client in zip(sent[True], sent[False], strict=True):
        assert direct.method == through_client.method
        assert direct.url == through_client.url
        assert direct.headers.multi_items() == through_client.headers.multi_items()
        assert direct.content == through_client.content
        assert direct.extensions["timeout"] == through_client.extensions["timeout"]
    assert sent[True][1].url.raw_path.endswith(
        b"/assessment/orders/a%2Fb%3Fc%23d%20%252F%20%C3%A9/result"
    )
    assert sent[True][1].extensions["timeout"]["read"] == 7.5


def test_with_a_proxy_in_the_environment_requests_go_through_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = client_for(Recorder(page([])))
    client.get_orders(INTEGRATION)
    assert client._direct is False
