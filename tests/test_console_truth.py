"""The console says what the records say: "Awaiting result" leaves out orders whose job
failed; problems link to the page that explains them; the chart's window fits the data.
Real Redis, the simulator, a worker run, uvicorn on a real socket (tests/_console.py)."""

from __future__ import annotations

import re

import pytest
from _console import FAILING_ID, GOOD, HOSTILE_ID, World, logged_in
from _console import world as world

pytestmark = pytest.mark.redis


def _cell(page: str, integration: str, css: str) -> str:
    row = re.search(rf'<tr data-integration="{re.escape(integration)}".*?</tr>', page, re.S)
    assert row, page
    cell = re.search(rf'<td class="{css}">(.*?)</td>', row.group(0), re.S)
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
