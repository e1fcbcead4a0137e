from __future__ import annotations

from typing import Any

import pytest
from _support import order_payload

from dispatcher import HandlerContext, Order, PermanentFailure, Settings
from dispatcher.jobs import HandlerFailed, Runtime, install_runtime, process_order, step_key

INTEGRATION = "lever:abc"


class Recording:
    def __init__(self, name: str, output: Any = None, error: Exception | None = None) -> None:
        self.name = name
        self.output = output
        self.error = error
        self.contexts: list[HandlerContext] = []

    def handle(self, order: Order, context: HandlerContext) -> Any:
        self.contexts.append(context)
        if self.error is not None:
            raise self.error
        return self.output


def install(*chain: Recording) -> None:
    install_runtime(Runtime(settings=Settings(), chain=list(chain)))


def test_the_chain_runs_in_order_and_later_steps_see_earlier_outputs() -> None:
    first = Recording("provision", {"test_url": "https://t/1"})
    second = Recording("notify", None)
    install(first, second)
    result = process_order(INTEGRATION, order_payload("A"))
    assert result["steps"] == {"provision": {"test_url": "https://t/1"}, "notify": {}}
    assert first.contexts[0].outputs == {}
    assert second.contexts[0].outputs == {"provision": {"test_url": "https://t/1"}}
    ctx = second.contexts[0]
    assert (ctx.integration_id, ctx.order_id, ctx.handler_name) == (INTEGRATION, "A", "notify")


def test_idempotency_keys_are_stable_per_step_and_distinct_otherwise() -> None:
    key = step_key("ns", INTEGRATION, "A", "provision")
    assert key == step_key("ns", INTEGRATION, "A", "provision")
    assert (
        len(
            {
                key,
                step_key("ns", INTEGRATION, "A", "notify"),
                step_key("ns", INTEGRATION, "B", "provision"),
                step_key("ns", "lever:other", "A", "provision"),
                step_key("other", INTEGRATION, "A", "provision"),
            }
        )
        == 5
    )
    handler = Recording("provision")
    install(handler)
    process_order(INTEGRATION, order_payload("A"))
    assert handler.contexts[0].idempotency_key == step_key(
        "dispatcher", INTEGRATION, "A", "provision"
    )


def test_a_failing_handler_is_named_and_stops_the_chain() -> None:
    later = Recording("notify")
    install(
        Recording("provision", error=PermanentFailure("vendor said 400: unknown package")), later
    )
    with pytest.raises(HandlerFailed) as info:
        process_order(INTEGRATION, order_payload("A"))
    assert str(info.value) == (
        f"handler provision failed on order A (integration {INTEGRATION}): "
        "vendor said 400: unknown package"
    )
    assert later.contexts == []


def test_an_output_that_is_not_json_is_refused_with_the_handler_named() -> None:
    install(Recording("weird", {"when": object()}))
    with pytest.raises(HandlerFailed, match=r"handler weird .* not JSON-serialisable"):
        process_order(INTEGRATION, order_payload("A"))


def test_an_output_that_is_not_a_mapping_is_refused() -> None:
    install(Recording("weird", ["a list"]))
    with pytest.raises(HandlerFailed, match=r"returned list, expected a mapping or None"):
        process_order(INTEGRATION, order_payload("A"))
