"""The fair feeder (dispatcher.store.fair): integrations take turns on the worker queue, a
capped integration waits parked without blocking the others, and a job is always in a list."""

from __future__ import annotations

import json
import time

from redis import Redis
from rq import Queue

from dispatcher.kombo.models import Order, parse_order
from dispatcher.store.fair import FairFeed, FairOptions
from dispatcher.store.job_options import JobOptions
from dispatcher.store.keys import Keys
from dispatcher.store.ledger import Ledger
from dispatcher.store.reconcile import Reconciler
from dispatcher.store.results import Outbox
from dispatcher.store.rq_internals import (
    fair_list_key,
    first_seen_key,
    intermediate_key,
    job_key,
    queue_key,
)
from support import order_payload, queued_job_ids

QUEUE = "dispatcher-orders"
A, B, C = "greenhouse:AAA", "lever:BBB", "workday:CCC"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def orders(prefix: str, count: int) -> list[Order]:
    return [parse_order(order_payload(f"{prefix}{i}")) for i in range(count)]


def ledger(redis: Redis, options: FairOptions, clock: Clock | None = None) -> Ledger:
    return Ledger(
        redis,
        Queue(QUEUE, connection=redis),
        "dispatcher",
        job_options=JobOptions(fair=options),
        clock=clock or Clock(),
    )


def feed_of(ledger_: Ledger) -> FairFeed:
    return ledger_.feeder


def take(redis: Redis, feed: FairFeed) -> tuple[str, str] | None:
    """What a worker does: pop the queue's head into the intermediate list, then ask."""
    job_id = redis.lmove(queue_key(QUEUE), intermediate_key(QUEUE), "LEFT", "RIGHT")
    if job_id is None:
        return None
    job_id = job_id.decode()
    integration = redis.hget(job_key(job_id), "meta")
    integration_id = next(i for i in (A, B, C) if integration and i.encode() in integration)
    if not feed.after_take(job_id, integration_id):
        return (integration_id, "refused")
    return (integration_id, job_id)


def order_of(redis: Redis, job_id: str) -> str:
    meta = json.loads(redis.hget(job_key(job_id), "meta"))
    return str(meta["order_id"])


def test_a_backlog_of_one_integration_takes_turns_with_the_others(any_redis: Redis) -> None:
    led = ledger(any_redis, FairOptions(window=2))
    led.dispatch(A, orders("a", 50))  # a burst
    led.dispatch(B, orders("b", 3))
    led.dispatch(C, orders("c", 3))
    # The worker queue holds a window of jobs, the rest wait on their integration's list.
    assert any_redis.llen(queue_key(QUEUE)) == 2
    assert len(queued_job_ids(any_redis)) == 56
    taken = [take(any_redis, feed_of(led)) for _ in range(12)]
    integrations = [t[0] for t in taken if t]
    # The window (a0, a1) and the job fed before B and C came, then one per integration in
    # turn: B's and C's orders are not behind A's 47 others.
    assert integrations == [A, A, A, B, C, A, B, C, A, B, C, A]


def test_every_job_is_in_exactly_one_list_after_each_move(any_redis: Redis) -> None:
    led = ledger(any_redis, FairOptions(window=3))
    led.dispatch(A, orders("a", 7))
    led.dispatch(B, orders("b", 4))
    ids = set(queued_job_ids(any_redis))
    assert len(ids) == 11
    for _ in range(11):
        take(any_redis, feed_of(led))
        waiting = queued_job_ids(any_redis)
        popped = [i.decode() for i in any_redis.lrange(intermediate_key(QUEUE), 0, -1)]
        everywhere = waiting + popped
        assert sorted(everywhere) == sorted(ids)  # none lost, none doubled


def test_rq_sees_each_integrations_backlog_as_a_queue_while_it_has_one(redis: Redis) -> None:
    led = ledger(redis, FairOptions(window=1))
    led.dispatch(A, orders("a", 4))
    by_name = {q.name: q.count for q in Queue.all(connection=redis)}
    assert by_name == {QUEUE: 1, f"{QUEUE}@{A}": 3}
    for _ in range(4):
        take(redis, feed_of(led))
    names = {q.name for q in Queue.all(connection=redis)}
    assert names == {QUEUE}  # an emptied list leaves rq:queues


def test_an_integration_at_its_cap_is_parked_and_the_others_go_on(any_redis: Redis) -> None:
    clock = Clock()
    led = ledger(any_redis, FairOptions(window=4, caps={A: 1}), clock)
    led.dispatch(A, orders("a", 5))
    led.dispatch(B, orders("b", 5))
    keys = Keys("dispatcher")
    # One A job fed (it holds the only lease), then A parks: the queue fills with B's.
    queued = [i.decode() for i in any_redis.lrange(queue_key(QUEUE), 0, -1)]
    assert [order_of(any_redis, i) for i in queued] == ["a0", "b0", "b1", "b2"]
    assert any_redis.smembers(keys.fair_parked) == {A.encode()}
    assert any_redis.zcard(keys.in_flight(A)) == 1
    first = take(any_redis, feed_of(led))
    assert first is not None and first[0] == A
    # While a0 runs, only B's jobs move, and the feeder never spins on A.
    for _ in range(4):
        got = take(any_redis, feed_of(led))
        assert got is not None and got[0] == B
    assert any_redis.llen(fair_list_key(QUEUE, A)) == 4
    # a0 ends: its lease goes, A is back in turn and its next job is fed (with the lease,
    # so A parks again).
    feed_of(led).release(first[1], A)
    assert any_redis.zrange(keys.in_flight(A), 0, -1) != [first[1].encode()]
    assert any_redis.zcard(keys.in_flight(A)) == 1
    queued = [order_of(any_redis, i.decode()) for i in any_redis.lrange(queue_key(QUEUE), 0, -1)]
    assert "a1" in queued and "a2" not in queued


def test_a_dead_holders_lease_expires_and_the_maintenance_pass_unparks(any_redis: Redis) -> None:
    clock = Clock()
    options = FairOptions(window=2, caps={A: 1}, running_lease_ttl=30, queued_lease_ttl=300)
    led = ledger(any_redis, options, clock)
    led.dispatch(A, orders("a", 3))
    first = take(any_redis, feed_of(led))
    assert first is not None and first[0] == A  # running, its worker then dies: no release
    clock.now += 20
    assert feed_of(led).feed(unpark=True) == 0  # the lease still counts
    clock.now += 11  # 31 s after its last renewal
    assert feed_of(led).feed(unpark=True) == 1
    queued = [order_of(any_redis, i.decode()) for i in any_redis.lrange(queue_key(QUEUE), 0, -1)]
    assert queued == ["a1"]


def test_a_requeued_job_without_a_lease_waits_for_one_at_its_lists_head(redis: Redis) -> None:
    clock = Clock()
    led = ledger(redis, FairOptions(window=2, caps={A: 1}, running_lease_ttl=30), clock)
    led.dispatch(A, orders("a", 2))
    first = take(redis, feed_of(led))
    assert first is not None
    redis.lrem(intermediate_key(QUEUE), 0, first[1])  # started (RQ's prepare_execution)
    clock.now += 31  # a0's worker died; its lease expired; the maintenance pass feeds a1
    feed_of(led).feed(unpark=True)
    second = take(redis, feed_of(led))
    assert second is not None and second[1] != "refused"
    # a0 is requeued by the recovery (straight onto the worker queue, as RQ does): a1 holds
    # the only lease, so a0 goes back to the head of A's list instead of running beside it.
    redis.rpush(queue_key(QUEUE), first[1])
    redis.set(first_seen_key(QUEUE, first[1]), "x")
    third = take(redis, feed_of(led))
    assert third == (A, "refused")
    assert redis.lrange(fair_list_key(QUEUE, A), 0, -1) == [first[1].encode()]
    assert redis.lrange(intermediate_key(QUEUE), 0, -1) == [second[1].encode()]
    assert not redis.exists(first_seen_key(QUEUE, first[1]))
    # a1 ends: a0 is fed again with a lease of its own.
    feed_of(led).release(second[1], A)
    assert redis.lrange(queue_key(QUEUE), 0, -1) == [first[1].encode()]


def test_the_reconciler_counts_a_job_waiting_its_turn_as_live(redis: Redis) -> None:
    led = ledger(redis, FairOptions(window=1), clock=time.time)  # type: ignore[arg-type]
    led.dispatch(A, orders("a", 3))
    reconciler = Reconciler(led, Outbox(redis, "dispatcher", "dispatcher-results"), ["log"],
                            grace=0)  # fmt: skip
    assert reconciler.run().findings == []
    # A job taken off its list by hand is in no place: the reconciler puts it back.
    lost = redis.rpop(fair_list_key(QUEUE, A))
    findings = reconciler.run().findings
    assert [f.job_id.encode() for f in findings] == [lost]
    assert lost in redis.lrange(queue_key(QUEUE), 0, -1)


def test_status_counts_the_orders_waiting_their_turn_as_queued(redis: Redis) -> None:
    from dispatcher.ops.status import take_snapshot
    from dispatcher.settings import load_settings

    led = ledger(redis, FairOptions(window=1), clock=time.time)  # type: ignore[arg-type]
    before = time.time()
    led.dispatch(A, orders("a", 4))
    led.dispatch(B, orders("b", 3))
    # A worker took the queue's one job (and its feed was lost): only the lists hold orders.
    redis.lmove(queue_key(QUEUE), intermediate_key(QUEUE), "LEFT", "RIGHT")
    snapshot = take_snapshot(redis, load_settings(DISPATCHER_NAMESPACE="dispatcher"))
    orders_queue = snapshot.queues[0]
    assert orders_queue.name == QUEUE
    assert orders_queue.queued == 6
    assert orders_queue.oldest_queued_at is not None
    assert before - 1 <= orders_queue.oldest_queued_at <= time.time()


def test_a_batch_take_moves_jobs_as_rqs_pop_does_and_tops_the_queue_up(any_redis: Redis) -> None:
    led = ledger(any_redis, FairOptions(window=4))
    led.dispatch(A, orders("a", 6))
    led.dispatch(B, orders("b", 2))
    taken = feed_of(led).take(3)
    assert [order_of(any_redis, job_id) for job_id, _ in taken] == ["a0", "a1", "a2"]
    # Each with its job hash, as RQ's fetch reads it; each in the intermediate list.
    assert all(fields[b"status"] == b"queued" for _, fields in taken)
    assert [i.decode() for i in any_redis.lrange(intermediate_key(QUEUE), 0, -1)] == [
        job_id for job_id, _ in taken
    ]
    # Topped up in turn (the ring was A, B): a3 was there, then a4, b0, a5.
    queued = [order_of(any_redis, i.decode()) for i in any_redis.lrange(queue_key(QUEUE), 0, -1)]
    assert queued == ["a3", "a4", "b0", "a5"]
    # A job whose hash is gone comes back empty (RQ skips it); an empty queue gives nothing.
    any_redis.delete(job_key(any_redis.lindex(queue_key(QUEUE), 0).decode()))
    assert [fields for _, fields in feed_of(led).take(1)] == [{}]
    assert len(feed_of(led).take(10)) == 4  # a4, b0, a5 and b1 (fed after the last take)
    assert feed_of(led).take(10) == []


def test_a_plain_take_from_another_queue_feeds_nothing_into_it(redis: Redis) -> None:
    led = ledger(redis, FairOptions(window=1))
    led.dispatch(A, orders("a", 3))
    results = FairFeed(redis, Keys("dispatcher"), "dispatcher-results", FairOptions(window=0))
    redis.rpush(queue_key("dispatcher-results"), "result-1")
    assert [job_id for job_id, _ in results.take(5)] == ["result-1"]
    assert redis.llen(queue_key("dispatcher-results")) == 0
    assert len(queued_job_ids(redis)) == 3  # the orders stay where they were
