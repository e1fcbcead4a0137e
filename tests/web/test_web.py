"""`/metrics` and `/healthz`: in process (Starlette's TestClient) and as `dispatcher web`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from dispatcher import Settings
from dispatcher.poller.telemetry import LATENCY_BUCKETS
from dispatcher.store.keys import Keys
from dispatcher.testing.sim import Simulator
from dispatcher.web.app import create_app
from support import free_port
from support.ops import FailsFor, Returns, env_for, invoke, settings_for, sweep, work
from support.web import samples, serving_client

pytestmark = pytest.mark.redis

GOOD = ["greenhouse:MetricsOne", "lever:MetricsTwo"]
MISSING = "workday:MetricsMissing"


@pytest.fixture
def sim() -> Simulator:
    return Simulator(GOOD, 5, seed=8)


@pytest.fixture
def settings(redis_url: str, sim: Simulator, namespace: str) -> Settings:
    return settings_for(redis_url, sim, namespace, KOMBO_INTEGRATION_IDS=",".join([*GOOD, MISSING]))


def test_metrics_expose_the_snapshot(redis: Redis, settings: Settings, sim: Simulator) -> None:
    sweep(redis, settings, sim, page_size=2)
    bad = sim.orders(GOOD[0])[0]["id"]
    work(redis, settings, [Returns("log"), FailsFor("provision", {bad})])
    sweep(redis, settings, sim, page_size=2)  # a second sweep: nothing new
    redis.hset(
        Keys(settings.namespace).step_stats,
        mapping={"log:completed": 10, "provision:completed": 9, "provision:failed": 1},
    )
    with serving_client(create_app(settings, redis)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    queue = settings.queue

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("dispatcher_redis_up") == 1
    assert value("dispatcher_queue_jobs", queue=queue, state="finished") == 9
    assert value("dispatcher_queue_jobs", queue=queue, state="failed") == 1
    assert value("dispatcher_queue_jobs", queue=queue, state="queued") == 0
    assert value("dispatcher_queue_oldest_queued_age_seconds", queue=queue) == 0
    assert value("dispatcher_orders_remembered") == 10
    assert value("dispatcher_orders_dispatched_total") == 10
    assert value("dispatcher_integration_healthy", integration=GOOD[0]) == 1
    assert value("dispatcher_integration_healthy", integration=MISSING) == 0
    assert value("dispatcher_integration_sweep_errors_total", integration=MISSING) == 2
    assert value("dispatcher_integration_sweep_errors_total", integration=GOOD[1]) == 0
    assert value("dispatcher_integration_orders_seen", integration=GOOD[1]) == 5
    last = value("dispatcher_integration_last_sweep_timestamp_seconds", integration=GOOD[0])
    assert 0 <= time.time() - last < 30
    assert (
        "dispatcher_integration_last_sweep_timestamp_seconds",
        (("integration", MISSING),),
    ) not in got
    # Issue 14, item 13: the age is Prometheus's to compute from the timestamp.
    assert not any(name.endswith("seconds_since_last_sweep") for name, _ in got)
    # No worker runs: 0, not an absent series.
    assert value("dispatcher_workers", state="busy") == 0
    assert value("dispatcher_workers", state="idle") == 0
    assert value("dispatcher_handler_steps_total", handler="provision", outcome="failed") == 1
    assert value("dispatcher_handler_steps_total", handler="log", outcome="completed") == 10
    # Two sweeps of two integrations, three pages each (5 orders, 2 a page), and two 404s.
    endpoint = "GET /assessment/orders"
    assert value("dispatcher_kombo_requests_total", endpoint=endpoint, status="200") == 12
    assert value("dispatcher_kombo_requests_total", endpoint=endpoint, status="404") == 2
    count = value(
        "dispatcher_kombo_request_duration_seconds_count", endpoint=endpoint, status="200"
    )
    assert count == 12
    inf = value(
        "dispatcher_kombo_request_duration_seconds_bucket",
        endpoint=endpoint,
        status="200",
        le="+Inf",
    )
    assert inf == 12
    buckets = [
        value(
            "dispatcher_kombo_request_duration_seconds_bucket",
            endpoint=endpoint,
            status="200",
            le=str(bound),
        )
        for bound in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 12  # cumulative; in-process is fast
    assert (
        value("dispatcher_kombo_request_duration_seconds_sum", endpoint=endpoint, status="200") > 0
    )
    assert (
        sum(v for (name, _), v in got.items() if name == "dispatcher_kombo_requests_total")
        == sim.request_count
    )


def test_healthz_answers_200_with_redis_and_503_without(redis: Redis, settings: Settings) -> None:
    with serving_client(create_app(settings, redis)) as client:
        ok = client.get("/healthz")
    # The first line is the verdict; notices about the server may follow (persistence off).
    assert (ok.status_code, ok.text.splitlines()[0]) == (200, "ok")
    down = Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    with serving_client(create_app(settings, down)) as client:
        failing = client.get("/healthz")
        metrics = client.get("/metrics")
    assert failing.status_code == 503
    assert failing.text == "redis: ConnectionError\n"
    # The scrape itself still works and says why the numbers are missing.
    assert metrics.status_code == 200
    assert samples(metrics.text) == {("dispatcher_redis_up", ()): 0}


def test_other_features_add_their_routes_to_the_same_app(redis: Redis, settings: Settings) -> None:
    def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("webhook here")

    app = create_app(
        settings, redis, extra_routes=[Route("/webhooks/kombo", hello, methods=["POST"])]
    )
    with serving_client(app) as client:
        assert client.post("/webhooks/kombo").text == "webhook here"
        assert client.get("/healthz").status_code == 200
        assert client.get("/nope").status_code == 404


@pytest.fixture
def web_process(
    redis: Redis, redis_url: str, settings: Settings
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
        env=env_for(redis_url, settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"dispatcher web did not start: {proc.communicate()}"
                    ) from None
                time.sleep(0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_dispatcher_web_serves_over_a_socket_and_stops_on_sigterm(
    redis: Redis, settings: Settings, sim: Simulator, web_process: tuple[subprocess.Popen[str], str]
) -> None:
    proc, url = web_process
    sweep(redis, settings, sim)
    assert httpx.get(f"{url}/healthz").status_code == 200
    scraped = samples(httpx.get(f"{url}/metrics").text)
    assert (
        scraped[("dispatcher_queue_jobs", (("queue", settings.queue), ("state", "queued")))] == 10
    )
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_dispatcher_web_starts_without_redis_and_answers_503_fast(
    redis_url: str, settings: Settings
) -> None:
    port = free_port()
    env = env_for(f"redis://127.0.0.1:{free_port()}/0", settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                started = time.monotonic()
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                took = time.monotonic() - started
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        assert response.status_code == 503
        assert took < 1.5
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_dispatcher_web_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, settings: Settings
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    result = invoke(["web"], env_for(redis_url, settings))
    assert result.exit_code == 2
    assert result.stderr == (
        "dispatcher: error: dispatcher web needs the web extra: "
        "pip install 'kombo-dispatcher[web]' (uvicorn is not installed)\n"
    )
