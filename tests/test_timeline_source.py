"""An order's timeline says how it came: by a sweep of the poller or by Kombo's webhook."""

from __future__ import annotations

import pytest
from redis import Redis
from rq import Queue

from _support import order_payload
from dispatcher.kombo.models import parse_order
from dispatcher.ops.results import order_timeline, timeline_lines
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger

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
