"""Tracing end to end over real processes (issue 26): ``dispatcher poll`` (or ``web``) ->
Redis -> ``dispatcher worker`` (forked work horses) -> the vendor stand-in, which records each
call's headers, with every process exporting OTLP/HTTP to a receiver here that decodes the
protobuf. Every provisioning POST carries a ``traceparent`` whose trace holds the poller's
(or web process's) spans and the worker's, the step and the HTTP client span included; a
retried job links to its first run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.otlp import ExportedSpan as Span
from dispatcher.testing.otlp import OtlpReceiver as Receiver
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.web.webhook import WEBHOOK_PATH
from support import dispatcher_env, dispatcher_web, wait_until
from support.trace_view import render_html
from support.webhook import event_body, signed

pytestmark = pytest.mark.redis
SECRET = "kombo-test-secret"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def span_tree(spans: list[Span]) -> list[str]:
    """The spans of one trace as indented lines: name, duration, process."""
    by_parent: dict[str, list[Span]] = {}
    ids = {span.span_id for span in spans}
    for span in spans:
        by_parent.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in by_parent.get(parent, []):
            link = f" (linked to {len(span.links)})" if span.links else ""
            lines.append(f"{'  ' * depth}{span.name}  {span.ms:.1f} ms  [{span.command}]{link}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return lines


def _env(redis_url: str, receiver: Receiver, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in dispatcher_env(redis_url).items() if not k.startswith("OTEL_")}
    return {
        **clean,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "dispatcher-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "DISPATCHER_RETRY_BACKOFF": "0",
        **extra,
    }


def _run(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _parent(call_headers: dict[str, str]) -> tuple[str, str]:
    _, trace_id, span_id, _ = call_headers["traceparent"].split("-")
    return trace_id, span_id


def _check_worker_half(spans: list[Span], vendor_span: str) -> Span:
    """The worker's part of one order's trace, down to the vendor call: its job span."""
    [post] = [s for s in spans if s.span_id == vendor_span]
    assert post.command == "worker" and post.name == "POST" and post.kind == 3  # CLIENT
    by_id = {s.span_id: s for s in spans}
    step = by_id[post.parent_id]
    assert step.name == "step provision_http" and step.command == "worker"
    job = by_id[step.parent_id]
    assert job.name == "process_order" and job.command == "worker"
    assert job.attributes["dispatcher.queue_wait_s"] >= 0
    return job


def _poll_and_work(
    receiver: Receiver,
    redis_url: str,
    vendor: VendorAPI,
    mailbox: Mailbox,
    sim: Simulator,
    *worker: str,
    **extra: str,
) -> None:
    with sim.serve() as kombo:
        env = _env(
            redis_url, receiver,
            KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=sim.integration_ids[0],
            DISPATCHER_HANDLERS="provision_http,notify_email",
            PROVISION_URL=vendor.url, SMTP_URL=mailbox.url, NOTIFY_FROM="Acme <t@acme.example>",
            **extra,
        )  # fmt: skip
        _run(env, "poll", "--once")
        _run(env, "worker", "--burst", *worker)
    for call in vendor.calls:
        trace_id, span_id = _parent(call.headers)
        wait_until(lambda t=trace_id, s=span_id: any(x.span_id == s for x in receiver.trace(t)),
                   what="the worker's spans")  # fmt: skip


def _retried_trace(receiver: Receiver, traces: set[str]) -> list[Span]:
    [retried] = [
        t for t in traces if sum(s.name == "process_order" for s in receiver.trace(t)) == 2
    ]
    wait_until(
        lambda: sum(s.name == "smtp send" for s in receiver.trace(retried)) == 1, what="smtp"
    )
    return receiver.trace(retried)


# Each way a worker runs jobs: a forked work horse per job (the default), in the worker process,
# in threads.
MODES = {
    "fork": ((), {}),
    "in-process": ((), {"DISPATCHER_FORK_PER_JOB": "false"}),
    "threads": (("--threads", "2"), {}),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_each_provisioning_call_carries_a_trace_holding_the_poller_and_the_worker(
    receiver: Receiver,
    redis: Redis,
    redis_url: str,
    vendor: VendorAPI,
    mailbox: Mailbox,
    mode: str,
) -> None:
    sim = Simulator(1, 3, closed=0, seed=5)
    vendor.failures = [503]  # one job fails its first attempt: retried, linked to its first run
    worker, extra = MODES[mode]
    _poll_and_work(receiver, redis_url, vendor, mailbox, sim, *worker, **extra)

    assert len(vendor.calls) == 4
    traces = {_parent(call.headers)[0] for call in vendor.calls}
    assert len(traces) == 3  # one trace per order
    for call in vendor.calls:
        trace_id, span_id = _parent(call.headers)
        spans = receiver.trace(trace_id)
        job = _check_worker_half(spans, span_id)
        by_id = {s.span_id: s for s in spans}
        dispatch = by_id[job.parent_id]
        assert dispatch.name == "dispatch" and dispatch.command == "poll"
        assert dispatch.attributes["dispatcher.order_id"] in {
            o["id"] for o in sim.orders(sim.integration_ids[0])
        }
        # Linked to the poller's sweep (a trace of its own, with its Kombo requests).
        [(sweep_trace, sweep_id)] = dispatch.links
        sweep = [s for s in receiver.trace(sweep_trace) if s.span_id == sweep_id]
        assert [s.name for s in sweep] == ["sweep"]
        kombo = [s for s in receiver.trace(sweep_trace) if s.parent_id == sweep_id]
        assert [s.name for s in kombo] == ["kombo GET"]
    # The retried order: two job spans in its trace, the second linked to the first, and
    # the second's steps down to the SMTP client span.
    spans = _retried_trace(receiver, traces)
    first, second = [s for s in spans if s.name == "process_order"]
    assert second.links == ((first.trace_id, first.span_id),)
    assert second.attributes["dispatcher.retried"] is True
    by_id = {s.span_id: s for s in spans}
    [smtp] = [s for s in spans if s.name == "smtp send"]
    assert by_id[smtp.parent_id].name == "step notify_email"
    assert by_id[by_id[smtp.parent_id].parent_id] == second
    print("\n".join(span_tree(spans)))


@pytest.mark.slow
@pytest.mark.browser
def test_one_orders_trace_renders_as_a_waterfall_in_a_browser(
    receiver: Receiver,
    redis: Redis,
    redis_url: str,
    vendor: VendorAPI,
    mailbox: Mailbox,
    tmp_path: Path,
) -> None:
    """Renders the retried order's trace (tests/support/trace_view.py) in chromium; with
    DISPATCHER_TRACE_SCREENSHOT=docs/trace.png the screenshot is written there."""
    from playwright.sync_api import sync_playwright

    chromium = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.exists():
        pytest.fail(f"no chromium at {chromium}: apt-get install chromium (or set TEST_CHROMIUM)")
    sim = Simulator(1, 3, closed=0, seed=5)
    vendor.failures = [503]
    _poll_and_work(receiver, redis_url, vendor, mailbox, sim)
    spans = _retried_trace(receiver, {_parent(call.headers)[0] for call in vendor.calls})
    order_id = next(s.attributes["dispatcher.order_id"] for s in spans if s.name == "dispatch")
    page_file = tmp_path / "trace.html"
    page_file.write_text(
        render_html(spans, f"order {order_id}: one trace, poll -> worker -> vendor")
    )
    shot = Path(os.environ.get("DISPATCHER_TRACE_SCREENSHOT", tmp_path / "trace.png"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 400})
            page.goto(page_file.as_uri())
            assert page.locator("tr").count() == len(spans)
            assert page.locator("td.name", has_text="smtp send").count() == 1
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_a_webhook_delivery_is_one_trace_from_the_request_to_the_vendor_call(
    receiver: Receiver, redis: Redis, redis_url: str, vendor: VendorAPI, tmp_path: Path
) -> None:
    sim = Simulator(1, 1, closed=0, seed=6)
    [order] = sim.orders(sim.integration_ids[0])
    with sim.serve() as kombo:
        env = _env(
            redis_url, receiver,
            KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=sim.integration_ids[0], KOMBO_WEBHOOK_SECRET=SECRET,
            DISPATCHER_WEBHOOK_CONFIRM="false", DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor.url,
        )  # fmt: skip
        body = event_body(order, sim.integration_ids[0])
        foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with dispatcher_web(env, tmp_path / "web.log") as url:
            answer = httpx.post(
                url + WEBHOOK_PATH, content=body, headers=signed(body) | {"traceparent": foreign}
            )
            assert answer.status_code == 200, answer.text
        _run(env, "worker", "--burst")

    [call] = vendor.calls
    trace_id, span_id = _parent(call.headers)
    wait_until(lambda: any(s.span_id == span_id for s in receiver.trace(trace_id)), what="spans")
    spans = receiver.trace(trace_id)
    job = _check_worker_half(spans, span_id)
    by_id = {s.span_id: s for s in spans}
    dispatch = by_id[job.parent_id]
    assert dispatch.name == "dispatch" and dispatch.command == "web"
    request = by_id[dispatch.parent_id]
    assert request.name == "POST " + WEBHOOK_PATH and request.command == "web"
    assert request.parent_id == ""  # the sender's traceparent is a link, not the parent
    assert request.links == (("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),)
    assert request.attributes["http.response.status_code"] == 200
