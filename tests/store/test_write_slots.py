"""A write job's slot under the write cap, taken and given back in the outbox's own steps
(issue 25, 4): ``Outbox.begin`` with a slot takes it and counts the attempt in one script,
``mark_written(release_slot=True)`` ends the write and gives it back in one, so a write costs
three Redis round trips (read, begin, written) instead of five; against a real Redis."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from redis import Redis

from dispatcher.kombo.client import KomboClient
from dispatcher.store.keys import Keys
from dispatcher.store.leases import WriteLeases
from dispatcher.store.results import Outbox, OutboxRecord
from dispatcher.store.wrongtype import WrongKeyTypeError
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.worker.results import ResultWriter

INTEGRATION = "greenhouse:AAAA"
BODY = {"status": "OPEN", "result_url": "https://vendor.example/r/1"}


@pytest.fixture
def outbox(redis: Redis, namespace: str) -> Outbox:
    return Outbox(redis, namespace, f"{namespace}-results")


def pending(outbox: Outbox, order: str) -> OutboxRecord:
    outbox.submit(INTEGRATION, order, BODY)
    record = outbox.get(INTEGRATION, order)
    assert record is not None
    return record


def test_begin_with_a_slot_takes_it_and_counts_the_attempt(outbox: Outbox) -> None:
    record = pending(outbox, "o1")
    leases = WriteLeases(outbox.redis, outbox.keys, 1)
    assert outbox.begin(record, record.job_id, leases.slot(INTEGRATION, 30)) == "begun"
    assert leases.in_flight(INTEGRATION) == 1
    after = outbox.get(INTEGRATION, "o1")
    assert after is not None and after.attempts == 1
    # A second body now waits behind the sent one instead of replacing it: the body is locked.
    waiting = outbox.submit(INTEGRATION, "o1", {**BODY, "score": 1, "max_score": 2})
    assert waiting.outcome == "queued"
    locked = outbox.get(INTEGRATION, "o1")
    assert locked is not None and locked.submission_id == record.submission_id


def test_begin_with_every_slot_taken_changes_nothing(outbox: Outbox) -> None:
    record = pending(outbox, "o1")
    leases = WriteLeases(outbox.redis, outbox.keys, 1)
    assert leases.acquire(INTEGRATION, "another-job", 30)
    assert outbox.begin(record, record.job_id, leases.slot(INTEGRATION, 30)) == "full"
    after = outbox.get(INTEGRATION, "o1")
    assert after is not None and after.attempts == 0
    # Not sent: a new body still replaces it.
    replaced = outbox.submit(INTEGRATION, "o1", {**BODY, "score": 1, "max_score": 2})
    assert replaced.outcome == "replaced"
    holders = outbox.redis.zrange(outbox.keys.kombo_writes(INTEGRATION), 0, -1)
    assert holders == [b"another-job"]


@pytest.mark.parametrize("who", ["stale", "changed"])
def test_begin_of_a_write_not_ours_takes_no_slot(outbox: Outbox, who: str) -> None:
    record = pending(outbox, "o1")
    job_id = "not-the-owner" if who == "stale" else record.job_id
    if who == "changed":
        outbox.submit(INTEGRATION, "o1", {**BODY, "score": 1, "max_score": 2})
    leases = WriteLeases(outbox.redis, outbox.keys, 5)
    assert outbox.begin(record, job_id, leases.slot(INTEGRATION, 30)) == who
    assert leases.in_flight(INTEGRATION) == 0


def test_mark_written_gives_the_slot_back_in_the_same_step_whatever_it_answers(
    outbox: Outbox,
) -> None:
    leases = WriteLeases(outbox.redis, outbox.keys, 5)
    record = pending(outbox, "o1")
    assert outbox.begin(record, record.job_id, leases.slot(INTEGRATION, 30)) == "begun"
    assert outbox.mark_written(record, record.job_id, [], release_slot=True) == "written"
    assert leases.in_flight(INTEGRATION) == 0
    # A holder whose write was ended meanwhile (stale) still gives its slot back.
    other = pending(outbox, "o2")
    assert leases.acquire(INTEGRATION, "ghost", 30)
    assert outbox.mark_written(other, "ghost", [], release_slot=True) == "stale"
    assert leases.in_flight(INTEGRATION) == 0
    # Without release_slot the leases are left alone.
    assert leases.acquire(INTEGRATION, other.job_id, 30)
    assert outbox.begin(other, other.job_id, leases.slot(INTEGRATION, 30)) == "begun"
    assert outbox.mark_written(other, other.job_id, []) == "written"
    assert leases.in_flight(INTEGRATION) == 1


def test_begin_never_exceeds_the_cap_under_contention(outbox: Outbox) -> None:
    records = [pending(outbox, f"o{i}") for i in range(40)]
    leases = WriteLeases(outbox.redis, outbox.keys, 5)
    answers: list[str] = []
    lock = threading.Lock()

    def begin(record: OutboxRecord) -> None:
        answer = outbox.begin(record, record.job_id, leases.slot(INTEGRATION, 30))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=begin, args=(r,)) for r in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == ["begun"] * 5 + ["full"] * 35
    assert leases.in_flight(INTEGRATION) == 5


def test_begin_refuses_a_lease_key_of_another_type_and_writes_nothing(outbox: Outbox) -> None:
    record = pending(outbox, "o1")
    key = outbox.keys.kombo_writes(INTEGRATION)
    outbox.redis.set(key, "junk")
    leases = WriteLeases(outbox.redis, outbox.keys, 5)
    with pytest.raises(WrongKeyTypeError, match=key):
        outbox.begin(record, record.job_id, leases.slot(INTEGRATION, 30))
    after = outbox.get(INTEGRATION, "o1")
    assert after is not None and after.attempts == 0


class CountingRedis(Redis):
    """Counts the commands sent outside pipelines (each is one round trip)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)


def test_a_write_costs_three_round_trips_and_leaves_no_slot_held(
    redis_url: str, namespace: str
) -> None:
    # Given a pending result, and a writer whose Redis client counts what it sends
    sim = Simulator([INTEGRATION], orders=1, closed=0)
    order = str(sim.orders(INTEGRATION, "OPEN")[0]["id"])
    counting = CountingRedis.from_url(redis_url)
    outbox = Outbox(counting, namespace, f"{namespace}-results")
    record = pending(outbox, order)
    leases = WriteLeases(counting, Keys(namespace), 10)
    client = KomboClient(DEFAULT_API_KEY, sim.base_url, transport=sim.transport(), retry_budget=0)
    writer = ResultWriter(outbox, leases, client)
    counting.sent.clear()
    # When it writes the result
    assert writer.run(INTEGRATION, order, record.job_id) == "written"
    # Then it read the record, began (slot and attempt) and ended it (written, slot back)
    assert counting.sent == ["HGETALL", "EVALSHA", "EVALSHA"]
    assert leases.in_flight(INTEGRATION) == 0
    assert sim.applied_writes[(INTEGRATION, order)] == 1
    counting.close()
