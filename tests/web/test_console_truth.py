"""The console says what the records say: "Awaiting result" leaves out orders whose job
failed; problems link to the page that explains them; the chart's window fits the data.
Real Redis, the simulator, a worker run, uvicorn on a real socket (tests/support/console.py)."""

from __future__ import annotations

import html
import re
import time
from urllib.parse import quote

import pytest

from dispatcher.store.results import Outbox
from dispatcher.store.timeline import mark_provisioned
from support.console import BROKEN, FAILING_ID, GOOD, HOSTILE_ID, World, logged_in
from support.ops import env_for, invoke

pytestmark = pytest.mark.redis


def _cell(page: str, integration: str, css: str) -> str:
    row = re.search(rf'<tr data-integration="{re.escape(integration)}".*?</tr>', page, re.S)
    assert row, page
    cell = re.search(rf"<td class=\"{css}\"[^>]*>(.*?)</td>", row.group(0), re.S)
    assert cell, row.group(0)
    return cell.group(1).strip()


def test_awaiting_result_leaves_out_the_orders_whose_job_failed(world: World) -> None:
    # Each good integration has 5 orders; one of each failed in the vendor step (HOSTILE_ID,
    # FAILING_ID); the second integration has one result written.
    assert HOSTILE_ID in {o["id"] for o in world.sim.orders(GOOD[0])}
    assert FAILING_ID in {o["id"] for o in world.sim.orders(GOOD[1])}
    with logged_in(world.url) as client:
        page = client.get("/console/integrations").text
    assert _cell(page, GOOD[0], "num backlog") == "4"
    assert _cell(page, GOOD[1], "num backlog") == "3"


def test_problems_link_to_the_console_page_that_explains_them(world: World) -> None:
    with logged_in(world.url) as client:
        live = client.get("/console/live").text
        problems = re.findall(r"<li><a href=\"([^\"]+)\">(.*?)</a></li>", live)
        links = {html.unescape(text): html.unescape(href) for href, text in problems}
        failing = next(t for t in links if t.startswith(f"integration {BROKEN}: sweep failing"))
        failed = next(t for t in links if t.startswith(f"2 failed jobs on {world.settings.queue}"))
        # The console's words, not the CLI's commands; the CLI keeps its hint.
        assert "dispatcher" not in failed and "`" not in " ".join(links), links
        assert links[failed] == "/console/failures"
        assert links[failing] == f"/console/integrations?q={quote(BROKEN)}"
        # Each page explains its problem: the failed jobs, the integration's row and error.
        assert client.get(links[failed]).text.count("<tr data-job=") == 2
        row = client.get(links[failing]).text
        assert re.findall(r'<tr data-integration="([^"]+)"', row) == [BROKEN]
        assert "KOMBO.&lt;b&gt;BAD&lt;/b&gt;" in row
    text = invoke(["status"], env_for(world.redis_url, world.settings)).stdout
    assert re.search(r"2 failed jobs on \S+, latest .*: see `dispatcher failed`", text), text


def test_result_problems_link_to_the_results_page_that_lists_them(world: World) -> None:
    settings, redis = world.settings, world.redis
    outbox = Outbox.from_settings(redis, settings)
    refused = world.sim.orders(GOOD[0])[1]["id"]
    outbox.submit(GOOD[0], refused, {"status": "COMPLETED", "result_url": "https://v.example/r"})
    record = outbox.get(GOOD[0], refused)
    assert record is not None
    assert outbox.mark_failed(record, record.job_id, "Kombo said 400: bad result") == "failed"
    stale = "STALE1"  # provisioned long ago (the seeded orders were provisioned just now)
    long_ago = time.time() - settings.stale_after - 3600
    mark_provisioned(redis, world.keys(), GOOD[0], stale, ["vendor"], clock=lambda: long_ago)
    with logged_in(world.url) as client:
        live = client.get("/console/live").text
        links = {
            html.unescape(text): href
            for href, text in re.findall(r"<li><a href=\"([^\"]+)\">(.*?)</a></li>", live)
        }
        assert links["1 result failed to be written to Kombo"] == "/console/results"
        (stale_line,) = [t for t in links if "provisioned more than" in t]
        assert links[stale_line] == "/console/results#stale"
        page = client.get("/console/results").text
    failed = re.search(r'<section id="failed-results">.*?</section>', page, re.S)
    stale_rows = re.search(r'<section id="stale">.*?</section>', page, re.S)
    assert failed and stale_rows, page
    assert re.findall(r'data-order="([^"]+)"', failed.group(0)) == [refused]
    assert "Kombo said 400: bad result" in failed.group(0)
    assert re.findall(r'data-order="([^"]+)"', stale_rows.group(0)) == [stale]
