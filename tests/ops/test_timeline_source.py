"""An order's timeline says how it came (a sweep of the poller or Kombo's webhook); `show`,
`GET /orders/{i}/{o}` and the console's order page tell one timeline, in causal order; and
`forget` removes what belonged to the forgotten dispatch."""

from __future__ import annotations

import html
import json
import re
import time
import types
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue

from dispatcher.kombo.models import parse_order
from dispatcher.ops.order_record import OrderRecord, StepRecord
from dispatcher.ops.timeline import order_timeline, timeline_lines
from dispatcher.settings import Settings
from dispatcher.store.keys import Keys, order_ref
from dispatcher.store.ledger import Ledger
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import Simulator
from dispatcher.web.app import create_app
from dispatcher.worker import steps as steps_module
from support import order_payload
from support.console import TOKEN, logged_in
from support.ops import FailsFor, Returns, env_for, invoke, settings_for, sweep, work
from support.web import serving

pytestmark = pytest.mark.redis

INTEGRATION = "greenhouse:TimelineSource0001"


def test_the_first_seen_event_names_the_path_the_order_came_by(redis: Redis) -> None:
    settings = Settings(  # type: ignore[call-arg]
        KOMBO_API_KEY="sk_test_timeline", KOMBO_INTEGRATION_IDS=INTEGRATION
    )
    ledger = Ledger(redis, Queue(settings.queue, connection=redis), settings.namespace)
    ledger.dispatch(INTEGRATION, [parse_order(order_payload("Polled1"))])
    ledger.dispatch(INTEGRATION, [parse_order(order_payload("Pushed1"))], source="webhook")

    polled = order_timeline(redis, settings, INTEGRATION, "Polled1")
    pushed = order_timeline(redis, settings, INTEGRATION, "Pushed1")

    assert polled[0]["event"] == "first_seen" and polled[0]["source"] == "poll"
    assert pushed[0]["event"] == "first_seen" and pushed[0]["source"] == "webhook"
    assert 'source="webhook"' in timeline_lines(pushed)[0]


def test_a_step_done_within_the_millisecond_of_the_start_is_shown_after_it(
    redis: Redis,
) -> None:
    # Steps keep their time to the millisecond (rounded), RQ its start to the microsecond:
    # a fast step once read before its job's start on a loaded machine.
    settings = Settings(  # type: ignore[call-arg]
        KOMBO_API_KEY="sk_test_timeline", KOMBO_INTEGRATION_IDS=INTEGRATION
    )
    start = 1_800_000_000.1232
    record = OrderRecord(
        order_id="Fast1",
        integration_id=INTEGRATION,
        job_id="job-fast1",
        seen_at=start - 1,
        job_status="finished",
        enqueued_at=start - 0.5,
        started_at=start,  # 123.2 ms
        ended_at=start + 0.001,
        steps=(StepRecord("log", {}, round(start + 0.0001, 3)),),  # 123.3 ms: 123 ms
    )

    events = order_timeline(redis, settings, INTEGRATION, "Fast1", record=record)

    kinds = [event["event"] for event in events]
    assert kinds.index("started") < kinds.index("step_done"), kinds


# -- one source, causal order, forget ------------------------------------------------------


API_TOKEN = "api-token-for-timeline-tests-0123"


@pytest.fixture
def retried(redis: Redis, redis_url: str, namespace: str) -> Iterator[dict[str, Any]]:
    """An order whose job failed in its second step, was re-queued with `dispatcher retry`
    and then finished (its first step not run again), with a result submitted; served by
    the app (results API and console) on a real socket."""
    sim = Simulator([INTEGRATION], 2, seed=8)
    order_id = sim.orders(INTEGRATION)[0]["id"]
    settings = settings_for(
        redis_url,
        sim,
        namespace,
        DISPATCHER_HANDLERS="log,vendor",
        DISPATCHER_CONSOLE_TOKEN=TOKEN,
        DISPATCHER_API_TOKEN=API_TOKEN,
    )
    env = env_for(redis_url, settings)
    sweep(redis, settings, sim)
    work(redis, settings, [Returns("log"), FailsFor("vendor", {order_id})])
    assert invoke(["retry", "--all-failed"], env).exit_code == 0
    work(redis, settings, [Returns("log", {"never": "again"}), Returns("vendor")])
    Outbox.from_settings(redis, settings).submit(
        INTEGRATION, order_id, {"status": "COMPLETED", "result_url": "https://vendor.example/r"}
    )
    with serving(create_app(settings, redis)) as url:
        yield {"settings": settings, "env": env, "order_id": order_id, "url": url, "sim": sim}


def test_the_chains_end_is_recorded_at_the_time_of_its_last_step(
    redis: Redis, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two clock readings, each to the millisecond, once put "provisioned" before the step
    # that ended the chain, when a millisecond ended between them (a loaded machine).
    sim = Simulator([INTEGRATION], 1, seed=9)
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="log")
    sweep(redis, settings, sim)
    later = types.SimpleNamespace(time=lambda: time.time() + 0.0007)  # a reading 0.7 ms on
    monkeypatch.setattr(steps_module, "time", later)
    work(redis, settings, [Returns("log")])
    order_id = sim.orders(INTEGRATION)[0]["id"]
    events = order_timeline(redis, settings, INTEGRATION, order_id)
    [step] = [e for e in events if e["event"] == "step_done"]
    [provisioned] = [e for e in events if e["event"] == "provisioned"]
    assert provisioned["at"] == step["at"]
    kinds = [e["event"] for e in events]
    assert kinds.index("step_done") < kinds.index("provisioned"), kinds


def _three_views(world: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """The timeline's event kinds from `show --json`, GET /orders/{i}/{o} and the console."""
    order_id = world["order_id"]
    shown = json.loads(
        invoke(["show", order_id, "--integration", INTEGRATION, "--json"], world["env"]).stdout
    )["timeline"]
    api = httpx.get(
        f"{world['url']}/orders/{INTEGRATION}/{order_id}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    )
    assert api.status_code == 200, api.text
    with logged_in(world["url"]) as client:
        page = client.get(f"/console/order?id={order_id}").text
    items = re.findall(r"<li><time>.*?</time> <strong>(.*?)</strong>", page)
    return (
        [e["event"] for e in shown],
        [e["event"] for e in api.json()["timeline"]],
        [html.unescape(item) for item in items],
    )


def test_show_the_api_and_the_console_tell_one_timeline_in_causal_order(
    retried: dict[str, Any],
) -> None:
    shown, api, console = _three_views(retried)
    assert shown == api
    # RQ keeps a job's last enqueued_at and started_at: attempt 2's, after attempt 1's steps.
    assert shown == [
        "first_seen",
        "enqueued",  # at the dispatch
        "step_done",  # log, in attempt 1
        "step_failed",  # vendor, in attempt 1
        "requeued",  # by `dispatcher retry`
        "started",  # attempt 2 (log is not run again)
        "step_done",  # vendor, in attempt 2
        "provisioned",
        "job_finished",
        "result_submitted",
    ], shown
    # The console says the same, event for event, in words.
    words = {
        "first_seen": "dispatched (marked seen by poll)",
        "enqueued": "queued",
        "started": "started",
        "step_done": "step",
        "step_failed": "failed in vendor",
        "requeued": "queued again",
        "provisioned": "provisioned",
        "job_finished": "job finished",
        "result_submitted": "result submitted: COMPLETED",
    }
    assert len(console) == len(shown), console
    for kind, said in zip(shown, console, strict=True):
        assert said.startswith(words[kind]), (kind, said)
    assert console.index("step log completed") < console.index("queued again for attempt 2")


def test_forget_removes_the_dispatchs_outbox_timeline_and_provisioned_entry(
    retried: dict[str, Any], redis: Redis
) -> None:
    settings, order_id = retried["settings"], retried["order_id"]
    keys = Keys(settings.namespace)
    ref = order_ref(INTEGRATION, order_id)
    assert redis.exists(keys.timeline(INTEGRATION, order_id), keys.outbox(INTEGRATION, order_id))
    assert redis.zscore(keys.provisioned, ref) is not None
    assert redis.zscore(keys.outbox_index("pending"), ref) is not None
    forgot = invoke(["forget", order_id, "--integration", INTEGRATION, "--yes"], retried["env"])
    assert forgot.exit_code == 0, forgot.output
    assert not redis.exists(keys.timeline(INTEGRATION, order_id))
    assert not redis.exists(keys.outbox(INTEGRATION, order_id))
    assert redis.zscore(keys.provisioned, ref) is None
    for state in ("pending", "written", "failed"):
        assert redis.zscore(keys.outbox_index(state), ref) is None
    # The next sweep dispatches it again: its timeline starts afresh.
    sweep(redis, settings, retried["sim"])
    shown, api, console = _three_views(retried)
    assert shown == api == ["first_seen", "enqueued"]
    assert console[0] == "dispatched (marked seen by poll)"
    assert not any("provisioned" in said or "result" in said for said in console)
