"""The console in a real browser: Playwright driving Debian's chromium against a real Redis,
the simulator and uvicorn on a real socket. Screenshots of each page: tests/artifacts/."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.ops.status import take_snapshot
from dispatcher.store import throughput
from dispatcher.store.results import Outbox
from dispatcher.web.console.data import y_of
from support.console import (
    ARTIFACTS,
    BROKEN,
    FAILING_ID,
    GOOD,
    HOSTILE_ID,
    HOSTILE_NAME,
    TOKEN,
    World,
)
from support.ops import FailsFor, Returns, env_for, invoke, sweep, work

# Slow: Chromium and uvicorn per test; CI runs it in its second step (and fails if Chromium
# is missing there).
pytestmark = [pytest.mark.redis, pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("TEST_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _require_browser() -> bool:
    # CI must not pass by skipping the browser tests (as with real Redis, tests/conftest.py).
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = ""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (the test extra)"
    if not reason and not CHROMIUM.exists():
        reason = f"no chromium at {CHROMIUM}: apt-get install chromium (or set TEST_CHROMIUM)"
    if reason:
        if _require_browser():
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, world: World) -> Iterator[Any]:
    context = browser.new_context(base_url=world.url, viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    # A CSP violation or a script error is a failure: the console runs no inline script.
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.on("dialog", lambda d: d.accept())
    yield tab
    context.close()
    assert not problems, problems


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def log_in(page: Any) -> None:
    page.goto("/")
    shot(page, "login")
    assert page.locator("input#token").get_attribute("type") == "password"
    page.fill("#token", TOKEN)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#live")


def test_overview_shows_the_problems_and_refreshes_itself(page: Any, world: World) -> None:
    log_in(page)
    problems = page.locator("#problems li").all_inner_texts()
    assert any(p.startswith(f"integration {BROKEN}: sweep failing") for p in problems), problems
    assert "2 failed jobs on" in " ".join(problems)
    assert page.inner_text("#failed-count") == "2"
    shot(page, "overview")
    # New orders arrive: the page shows them without a reload.
    page.evaluate("window.notReloaded = true")
    before = int(page.inner_text("#total-dispatched"))
    for n in range(3):
        world.sim.add_order(GOOD[0], id=f"LATE{n}")
    sweep(world.redis, world.settings, world.sim, integration_ids=GOOD)
    # (Not wait_for_function: the console's CSP forbids the eval it needs.)
    from playwright.sync_api import expect

    expect(page.locator("#total-dispatched")).to_have_text(str(before + 3), timeout=15_000)
    assert page.evaluate("window.notReloaded") is True


@pytest.mark.parametrize(("window", "minutes"), [("", 60), ("24h", 24 * 60)])
def test_the_charts_points_are_the_counters(
    page: Any, world: World, window: str, minutes: int
) -> None:
    log_in(page)
    if window:  # the last hour by default; 24 hours on request
        page.goto(f"/?window={window}")
    svg = page.locator("svg#chart")
    first = int(svg.get_attribute("data-first-minute"))
    peak = int(svg.get_attribute("data-peak"))
    height = int(svg.get_attribute("data-height"))
    # The window the page drew (read at its own clock: a minute may have turned since).
    assert abs(first - (int(time.time()) // 60 - minutes + 1)) <= 1
    series = throughput.read_series(world.redis, world.keys(), (first + minutes - 1) * 60, minutes)
    assert first == series.first_minute
    assert series.total("dispatched") > 0 and series.total("found") > 0
    assert series.total("results") == 1
    for kind in throughput.KINDS:
        line = page.locator(f"polyline[data-kind={kind}]")
        shown = dict(
            (int(m), int(c))
            for m, c in (
                pair.split(":")
                for pair in filter(None, line.get_attribute("data-counts").split(","))
            )
        )
        expected = {first + i: c for i, c in enumerate(series.counts[kind]) if c}
        assert shown == expected, kind
        points = [tuple(map(int, p.split(","))) for p in line.get_attribute("points").split()]
        assert len(points) == minutes
        for x, y in points:
            assert y == y_of(series.counts[kind][x], peak, height), (kind, x)
        # The legend's total is the sum of the counters, and says what it counts.
        assert int(page.inner_text(f"#total-{kind}")) == series.total(kind)
        assert page.locator(f".legend .key.{kind}").get_attribute("title")
    # The time labels: 6 (an hour, every 10 minutes) or 8 (a day, every 3 hours), each
    # whole inside the chart, none over another.
    labels = page.locator("svg#chart text.tick-label")
    assert labels.count() in ({6, 7} if minutes == 60 else {8, 9})
    frame = svg.bounding_box()
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    for box in boxes:
        assert frame["x"] <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"]
        assert box["height"] < 20  # not stretched with the plot
    for left, right in itertools.pairwise(boxes):
        assert left["x"] + left["width"] < right["x"]


def test_filter_integrations_and_pause_one(page: Any, world: World) -> None:
    log_in(page)
    page.click("nav >> text=Integrations")
    rows = page.locator("#integrations tbody tr")
    assert rows.count() == 3
    page.fill("#filter", "lever")  # filters as you type
    visible = page.locator("#integrations tbody tr:visible")
    assert visible.count() == 1
    assert visible.first.get_attribute("data-integration") == GOOD[1]
    shot(page, "integrations")
    page.fill("#filter", "")
    row = page.locator(f"tr[data-integration='{GOOD[0]}']")
    row.locator("button:has-text('Pause')").click()
    page.wait_for_selector(f"tr[data-integration='{GOOD[0]}'] button:has-text('Resume')")
    assert page.locator(f"tr[data-integration='{GOOD[0]}'] td.state").inner_text() == "paused"
    # `dispatcher status --json` agrees.
    snapshot = take_snapshot(world.redis, world.settings)
    assert [i.integration_id for i in snapshot.integrations if i.paused] == [GOOD[0]]
    status = invoke(["status", "--json"], env_for(world.redis_url, world.settings))
    assert json.loads(status.stdout)["integrations"][GOOD[0]]["paused"] is True
    # Server-side filter and sort: the paused ones.
    page.select_option("#state", "paused")
    page.click("form.filters button")
    page.wait_for_url("**state=paused**")
    assert page.locator("#integrations tbody tr").count() == 1


def test_retry_a_failed_job_and_watch_it_finish(page: Any, world: World) -> None:
    log_in(page)
    page.click("nav >> text=Failures")
    assert page.locator("#failures tbody tr").count() == 2
    shot(page, "failures")
    row = page.locator("#failures tbody tr", has_text=FAILING_ID)
    row.locator("button:has-text('Retry')").click()
    page.wait_for_selector("#retried")
    assert page.inner_text("#retried") == "Re-queued 1 job."
    work(world.redis, world.settings, [Returns("vendor")])  # a burst worker, in process
    page.reload()
    assert page.locator("#failures tbody tr[data-job]").count() == 1
    page.click(f"#failures a:has-text('{HOSTILE_ID}')")
    page.wait_for_selector("section.order")
    page.goto(f"/console/order?id={FAILING_ID}")
    assert page.inner_text("section.order .status") == "finished"
    assert "step vendor completed" in page.inner_text("ol.timeline")


def test_an_order_timeline_escapes_the_candidate(page: Any, world: World) -> None:
    log_in(page)
    page.click("nav >> text=Order")
    page.fill("#order-id", HOSTILE_ID)
    page.click("form.filters button")
    page.wait_for_selector("section.order")
    # The name is text on the page: no script element came from it, nothing ran.
    assert HOSTILE_NAME in page.inner_text("section.order .candidate")
    assert page.locator("section.order script, section.order img").count() == 0
    assert page.locator("script").count() == 1
    timeline = page.inner_text("ol.timeline")
    assert "dispatched (marked seen by poll)" in timeline and "failed in vendor" in timeline
    shot(page, "order")


# -- 800 px --------------------------------------------------------------------------------

LONG_ERROR = (
    "upstream ATS answered 502 Bad Gateway at "
    "https://api.example-ats.com/v3/assessment/orders/aVeryLongPathSegmentWithoutAnySpaces"
    "ThatMustWrapSomewhere0123456789 after 3 attempts; "
) * 3

# What a page may show in a scroll box of its own without making the page wider.
_OVERFLOW = """() => {
  const width = window.innerWidth;
  const over = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;
    if (box.right > width + 0.5) {
      over.push(`${el.tagName.toLowerCase()}.${el.className.baseVal ?? el.className}`
        + `#${el.id} right=${Math.round(box.right)}`);
    }
  }
  return {scroll: document.documentElement.scrollWidth, width, over: over.slice(0, 10)};
}"""


def test_every_page_fits_800_px_with_long_errors(browser: Any, world: World) -> None:
    # Realistic and long: a sweep error and a handler's reason with a URL and no spaces.
    world.redis.hset(
        world.keys().sweep(BROKEN),
        mapping={"last_error": f"integration {BROKEN}: {LONG_ERROR}", "error_count": 7},
    )
    world.sim.add_order(GOOD[1], id="LONGREASON1")
    sweep(world.redis, world.settings, world.sim, integration_ids=[GOOD[1]])
    work(world.redis, world.settings, [FailsFor("vendor", {"LONGREASON1"}, reason=LONG_ERROR)])
    outbox = Outbox.from_settings(world.redis, world.settings)
    refused = world.sim.orders(GOOD[0])[1]["id"]
    outbox.submit(GOOD[0], refused, {"status": "COMPLETED", "result_url": "https://v.example/r"})
    record = outbox.get(GOOD[0], refused)
    assert record is not None and outbox.mark_failed(record, record.job_id, LONG_ERROR)
    context = browser.new_context(base_url=world.url, viewport={"width": 800, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    try:
        tab.goto("/")
        assert tab.evaluate(_OVERFLOW)["over"] == []  # the login form
        tab.fill("#token", TOKEN)
        tab.click("button:has-text('Log in')")
        tab.wait_for_selector("#live")
        pages = {
            "overview": "/",
            "overview-24h": "/?window=24h",
            "integrations": "/console/integrations",
            "failures": "/console/failures",
            "results": "/console/results",
            "order": f"/console/order?id={HOSTILE_ID}",
            "order-long": "/console/order?id=LONGREASON1",
        }
        for name, path in pages.items():
            tab.goto(path)
            found = tab.evaluate(_OVERFLOW)
            tab.screenshot(path=str(ARTIFACTS / f"console-800-{name}.png"), full_page=True)
            assert found["scroll"] <= found["width"], (path, found)
            assert found["over"] == [], (path, found)
        # "Last error" reads as lines of words, not a column of one or two characters.
        tab.goto("/console/integrations")
        cell = tab.locator(f"tr[data-integration='{BROKEN}'] td.error")
        assert cell.bounding_box()["width"] >= 300
        assert LONG_ERROR.split(";")[0] in cell.inner_text()
        # Stacked as cards (each cell a "label value" line), no cell is empty or overlaps.
        cells = tab.locator("#integrations tbody td")
        boxes = [cells.nth(i).bounding_box() for i in range(cells.count())]
        assert all(box["height"] >= 16 for box in boxes), boxes
        for upper, lower in itertools.pairwise(boxes):
            assert upper["y"] + upper["height"] <= lower["y"] + 0.5, (upper, lower)
    finally:
        context.close()
