from __future__ import annotations

import re
import threading
from typing import Any

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from dispatcher.kombo.models import Order, OrderValidationError, RawOrder, parse_order
from dispatcher.store.keys import job_id_for
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.store.seen import parse_seen
from support import order_payload, queued_job_ids

INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"


def orders(*ids: str) -> list[Order]:
    return [parse_order(order_payload(i)) for i in ids]


def make_ledger(redis: Redis, namespace: str = "dispatcher") -> Ledger:
    return Ledger(redis, Queue("dispatcher-orders", connection=redis), namespace)


def test_new_orders_are_enqueued_and_remembered(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    result = ledger.dispatch(INTEGRATION, orders("A", "B", "C"))
    assert result.enqueued == ["A", "B", "C"]
    assert result.already_seen == 0
    assert ledger.queue.count == 3
    assert ledger.seen_count() == 3
    assert ledger.seen_at(INTEGRATION, "A") is not None
    assert ledger.seen_at(INTEGRATION, "Z") is None


def test_seen_orders_are_skipped_on_every_later_sweep(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    ledger.dispatch(INTEGRATION, orders("A", "B"))
    result = ledger.dispatch(INTEGRATION, orders("A", "B", "C"))
    assert result.enqueued == ["C"]
    assert result.already_seen == 2
    assert ledger.queue.count == 3


def test_duplicates_within_one_page_are_enqueued_once(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    result = ledger.dispatch(INTEGRATION, orders("A", "A", "B"))
    assert result.enqueued == ["A", "B"]
    assert ledger.queue.count == 2


def test_the_key_is_integration_and_order(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    ledger.dispatch("lever:one", orders("A"))
    result = ledger.dispatch("lever:two", orders("A"))
    assert result.enqueued == ["A"]
    assert ledger.queue.count == 2
    assert len(set(ledger.queue.job_ids)) == 2


def test_the_job_carries_the_order_and_names_it_for_rq_tools(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    raw = order_payload("A", custom_fields={"x": 1})
    ledger.dispatch(INTEGRATION, [parse_order(raw)])
    job = Job.fetch(ledger.queue.job_ids[0], connection=any_redis, serializer=JOB_SERIALIZER)
    assert job.func_name == "dispatcher.worker.jobs.process_order"
    # The namespace travels with the job: a worker of another namespace must not run it.
    assert job.kwargs == {"integration_id": INTEGRATION, "order": raw, "namespace": "dispatcher"}
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == "dispatcher-orders"
    assert job.enqueued_at is not None
    assert job.description == f"order A integration {INTEGRATION} package typescript_test"
    assert job.meta == {
        "order_id": "A",
        "integration_id": INTEGRATION,
        "package_id": "typescript_test",
        "namespace": "dispatcher",
        "chain": [],
        "source": "poll",
    }
    # rq's own listing of queues sees the queue.
    assert [q.name for q in Queue.all(connection=any_redis)] == ["dispatcher-orders"]


def test_job_ids_are_deterministic_rq_safe_and_distinct() -> None:
    a = job_id_for("dispatcher", "greenhouse:X", "O1")
    assert a == job_id_for("dispatcher", "greenhouse:X", "O1")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", a)
    others = {
        job_id_for("dispatcher", "greenhouse:X", "O2"),
        job_id_for("dispatcher", "greenhouse:Y", "O1"),
        job_id_for("other", "greenhouse:X", "O1"),
        # ":" joins would collide here; the job id must not.
        job_id_for("dispatcher", "greenhouse", "X:O1"),
    }
    assert a not in others and len(others) == 4


def test_the_seen_store_holds_ids_not_payloads(redis: Redis) -> None:
    ledger = make_ledger(redis)
    ledger.dispatch(INTEGRATION, orders("A"))
    stored = redis.hgetall(ledger.keys.seen(INTEGRATION))
    assert list(stored) == [b"A"]
    assert stored[b"A"].isdigit()  # first-seen unix time, nothing else


class _CountingRedis(Redis):
    """Counts round trips: one per command outside pipelines, one per pipeline execute."""

    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).round_trips += 1
        return super().execute_command(*args, **options)


@pytest.mark.parametrize("page_size", [1, 50, 250])
def test_a_page_costs_at_most_three_round_trips(redis_url: str, page_size: int) -> None:
    redis = _CountingRedis.from_url(redis_url)
    redis.flushdb()
    ledger = make_ledger(redis)
    ledger.dispatch("warm:up", orders("W"))  # Queue's one-off server version probe
    page = orders(*(f"O{i}" for i in range(page_size)))

    _CountingRedis.round_trips = 0
    redis.script_flush()  # worst case: the server forgot the script
    _CountingRedis.round_trips = 0
    assert len(ledger.dispatch(INTEGRATION, page).enqueued) == page_size
    assert _CountingRedis.round_trips <= 3

    _CountingRedis.round_trips = 0
    assert ledger.dispatch(INTEGRATION, page).enqueued == []
    assert _CountingRedis.round_trips == 1  # a re-sweep is one HMGET


def test_concurrent_dispatchers_enqueue_each_order_once(redis_url: str) -> None:
    ids = [f"O{i}" for i in range(200)]
    for _ in range(10):
        Redis.from_url(redis_url).flushdb()
        barrier = threading.Barrier(4)
        results: list[list[str]] = []

        def sweep(
            chunk: list[str],
            barrier: threading.Barrier = barrier,
            results: list[list[str]] = results,
        ) -> None:
            ledger = make_ledger(Redis.from_url(redis_url))
            barrier.wait()
            results.append(ledger.dispatch(INTEGRATION, orders(*chunk)).enqueued)

        # Overlapping pages, as when two pollers sweep the same integration.
        chunks = [ids, ids[::-1], ids[50:], ids[:150]]
        threads = [threading.Thread(target=sweep, args=(c,)) for c in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        enqueued = [order_id for r in results for order_id in r]
        assert sorted(enqueued) == sorted(ids)
        queued = queued_job_ids(Redis.from_url(redis_url))
        assert len(queued) == len(ids)
        assert len(set(queued)) == len(ids)


def test_namespaces_do_not_see_each_other(any_redis: Redis) -> None:
    first = make_ledger(any_redis, "alpha")
    second = make_ledger(any_redis, "beta")
    first.dispatch(INTEGRATION, orders("A"))
    assert second.dispatch(INTEGRATION, orders("A")).enqueued == ["A"]
    assert len(set(first.queue.job_ids)) == 2


# -- raw orders: validated only when new ------------------------------------------------------


def raw_orders(*payloads: dict[str, Any]) -> list[RawOrder]:
    return [RawOrder.check(p, position) for position, p in enumerate(payloads)]


def test_a_raw_order_is_validated_only_when_it_is_new(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    ledger.dispatch(INTEGRATION, orders("A"))
    broken = order_payload("A")
    broken["candidate"]["email"] = 42  # invalid, but already dispatched: not looked at again
    result = ledger.dispatch(INTEGRATION, raw_orders(broken, order_payload("B")))
    assert result.enqueued == ["B"]
    assert result.already_seen == 1

    bad_new = order_payload("C")
    bad_new["candidate"]["email"] = 42
    result = ledger.dispatch(INTEGRATION, raw_orders(order_payload("D"), bad_new))
    # The invalid new order is left out and returned (issue 12: one order that can never
    # validate used to fail the whole call); the valid one beside it is dispatched.
    assert [str(problem) for problem in result.invalid] == [
        "order C: field candidate.email: Input should be a valid string"
    ]
    assert result.enqueued == ["D"]
    assert ledger.seen_at(INTEGRATION, "C") is None  # unseen: dispatched once corrected
    assert ledger.queue.count == 3


def test_a_raw_order_is_enqueued_as_kombo_sent_it(any_redis: Redis) -> None:
    ledger = make_ledger(any_redis)
    raw = order_payload("A", custom_fields={"x": [1, {"y": None}]})
    ledger.dispatch(INTEGRATION, raw_orders(raw))
    job = Job.fetch(ledger.queue.job_ids[0], connection=any_redis, serializer=JOB_SERIALIZER)
    assert job.kwargs == {"integration_id": INTEGRATION, "order": raw, "namespace": "dispatcher"}
    assert job.meta["package_id"] == "typescript_test"


def test_a_raw_order_needs_a_string_id() -> None:
    with pytest.raises(OrderValidationError, match=r"^order #3: field id: "):
        RawOrder.check({"package_id": "p"}, 3)
    with pytest.raises(OrderValidationError, match=r"^order #0: field id: "):
        RawOrder.check({**order_payload("A"), "id": 7}, 0)
    with pytest.raises(OrderValidationError, match=r"^order #1: "):
        RawOrder.check(["not", "an", "object"], 1)


# -- generation marks: renewed lazily, never letting an OPEN order be pruned ------------------


def _marks(redis: Redis, ledger: Ledger) -> dict[str, int]:
    stored = redis.hgetall(ledger.keys.seen(INTEGRATION))
    return {k.decode(): parse_seen(v)[1] for k, v in stored.items()}


def test_a_full_sweep_renews_only_marks_about_to_go_stale(redis_url: str) -> None:
    redis = _CountingRedis.from_url(redis_url)
    redis.flushdb()
    ledger = make_ledger(redis)
    page = orders("A", "B")
    ledger.dispatch(INTEGRATION, page, generation=1, keep_generations=3)
    assert _marks(redis, ledger) == {"A": 1, "B": 1}
    for generation in (2, 3):  # within the slack of 3 - 1 sweeps: one HMGET, no write
        _CountingRedis.round_trips = 0
        ledger.dispatch(INTEGRATION, page, generation=generation, keep_generations=3)
        assert _CountingRedis.round_trips == 1
        assert _marks(redis, ledger) == {"A": 1, "B": 1}
    ledger.dispatch(INTEGRATION, page, generation=4, keep_generations=3)
    assert _marks(redis, ledger) == {"A": 4, "B": 4}
    # keep_generations=1 renews on every full sweep, as before the slack.
    ledger.dispatch(INTEGRATION, page, generation=5, keep_generations=1)
    assert _marks(redis, ledger) == {"A": 5, "B": 5}


def test_an_order_seen_only_by_incremental_sweeps_is_marked_by_the_next_full_one(
    any_redis: Redis,
) -> None:
    ledger = make_ledger(any_redis)
    ledger.dispatch(INTEGRATION, orders("A"))  # incremental: no generation
    assert _marks(any_redis, ledger) == {"A": 0}
    ledger.dispatch(INTEGRATION, orders("A"), generation=7)
    assert _marks(any_redis, ledger) == {"A": 7}


@settings(max_examples=60, deadline=None)
@given(
    keep=st.integers(min_value=1, max_value=4),
    open_in=st.lists(st.booleans(), min_size=1, max_size=14),
)
def test_pruning_never_forgets_an_open_order_and_forgets_a_closed_one_in_time(
    keep: int, open_in: list[bool]
) -> None:
    """Full sweep g sees the order iff open_in[g - 1]; it is old enough from the start."""
    redis = fakeredis.FakeRedis()
    clock = [1_000_000_000.0]
    ledger = Ledger(redis, Queue("q", connection=redis), "dispatcher", clock=lambda: clock[0])
    dispatched = expected = 0
    remembered = False
    last_open = 0
    for generation, is_open in enumerate(open_in, start=1):
        if is_open:
            expected += not remembered  # forgotten (or never seen): dispatched anew
            dispatched += len(
                ledger.dispatch(
                    INTEGRATION, orders("A"), generation=generation, keep_generations=keep
                ).enqueued
            )
            last_open = generation
        clock[0] += 40 * 86400
        ledger.prune(INTEGRATION, generation=generation, keep_generations=keep, retention=86400)
        remembered = ledger.seen_at(INTEGRATION, "A") is not None
        missing = generation - last_open
        if last_open and missing < keep:
            assert remembered, (generation, missing)  # OPEN, or missing from < keep sweeps
        if missing >= 2 * keep - 1:
            assert not remembered, (generation, missing)  # missing long enough: forgotten
    assert dispatched == expected
