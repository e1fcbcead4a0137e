"""The results outbox against a real Redis and the simulator: submit, write, retry, lost
answers, the write cap (dispatcher/store/results.py, dispatcher/worker/results.py)."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Queue

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.results import InvalidResultError
from dispatcher.store.keys import Keys
from dispatcher.store.leases import WriteLeases
from dispatcher.store.results import (
    FinalResultError,
    Outbox,
    ResultInFlightError,
    UnknownOrderError,
)
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.store.wrongtype import WrongKeyTypeError
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.worker.results import (
    READ_BACK_MATCHED,
    READ_BACK_OTHER,
    READ_BACK_STATUS_ONLY,
    ResultWriter,
)

URL = "https://vendor.example/r/1"
INTEGRATION = "greenhouse:AAAA"


def body(status: str = "COMPLETED", **extra: Any) -> dict[str, Any]:
    return {"status": status, "result_url": URL, **extra}


@pytest.fixture
def sim() -> Simulator:
    return Simulator([INTEGRATION, "lever:BBBB"], orders=5, closed=0)


@pytest.fixture
def outbox(redis: Redis, namespace: str) -> Outbox:
    return Outbox(redis, namespace, f"{namespace}-results")


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_writer(
    outbox: Outbox, sim: Simulator, *, cap: int = 10, clock: Clock | None = None, **kw: Any
) -> ResultWriter:
    client = KomboClient(DEFAULT_API_KEY, sim.base_url, transport=sim.transport(), retry_budget=0)
    leases = WriteLeases(outbox.redis, outbox.keys, cap, clock=clock or Clock())
    return ResultWriter(
        outbox,
        leases,
        client,
        clock=clock or Clock(),
        sleep=lambda s: None,
        rng=random.Random(1),
        **kw,
    )


def first_order(sim: Simulator, integration: str = INTEGRATION) -> str:
    return str(sim.orders(integration, "OPEN")[0]["id"])


def queued(redis: Redis, outbox: Outbox) -> list[str]:
    return [j.decode() for j in redis.lrange(outbox.queue.key, 0, -1)]  # type: ignore[union-attr]


def run_pending(outbox: Outbox, writer: ResultWriter, integration: str, order: str) -> str:
    record = outbox.get(integration, order)
    assert record is not None
    return writer.run(integration, order, record.job_id)


# -- submit ---------------------------------------------------------------------------------


def test_a_submit_stores_the_body_and_queues_one_job(redis: Redis, outbox: Outbox) -> None:
    receipt = outbox.submit(INTEGRATION, "o1", body(score=3, max_score=5))
    assert receipt.outcome == "queued" and receipt.state == "pending"
    record = outbox.get(INTEGRATION, "o1")
    assert record is not None and record.state == "pending" and record.body["score"] == 3
    assert queued(redis, outbox) == [record.job_id]
    job = Queue(outbox.queue.name, connection=redis, serializer=JOB_SERIALIZER).fetch_job(
        record.job_id
    )
    assert job is not None and job.kwargs == {"integration_id": INTEGRATION, "order_id": "o1"}
    assert outbox.counts() == {"pending": 1, "written": 0, "failed": 0}


def test_an_identical_submit_returns_the_same_receipt_and_queues_nothing(
    redis: Redis, outbox: Outbox
) -> None:
    first = outbox.submit(INTEGRATION, "o1", body())  # completed_at defaulted: still identical
    again = outbox.submit(INTEGRATION, "o1", body())
    assert again.outcome == "duplicate"
    assert (again.submission_id, again.submitted_at) == (first.submission_id, first.submitted_at)
    assert len(queued(redis, outbox)) == 1


def test_a_different_body_while_pending_replaces_it_and_kombo_gets_the_last(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body(score=1, max_score=5))
    second = outbox.submit(INTEGRATION, order, body(score=4, max_score=5))
    assert second.outcome == "replaced"
    assert len(queued(redis, outbox)) == 1
    assert run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order) == "written"
    assert sim.results[(INTEGRATION, order)]["score"] == 4
    assert sim.applied_writes[(INTEGRATION, order)] == 1


def test_a_submit_after_a_final_result_was_written_is_refused(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body())
    run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order)
    before = queued(redis, outbox)
    with pytest.raises(FinalResultError, match=f"order {order} .*COMPLETED.* already written"):
        outbox.submit(INTEGRATION, order, body("CANCELLED"))
    assert queued(redis, outbox) == before
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written" and record.status == "COMPLETED"


def test_a_partial_result_may_be_followed_by_later_ones(outbox: Outbox, sim: Simulator) -> None:
    order = first_order(sim)
    writer = make_writer(outbox, sim)
    outbox.submit(INTEGRATION, order, body("OPEN"))
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"
    assert outbox.submit(INTEGRATION, order, body("COMPLETED")).outcome == "queued"
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"
    assert sim.applied_writes[(INTEGRATION, order)] == 2
    assert sim.orders(INTEGRATION, "COMPLETED")[0]["id"] == order


def test_a_bad_body_is_refused_naming_the_field_and_nothing_is_stored(
    redis: Redis, outbox: Outbox
) -> None:
    with pytest.raises(InvalidResultError, match="result_url"):
        outbox.submit(INTEGRATION, "o1", {"status": "COMPLETED", "result_url": "ftp://x"})
    with pytest.raises(InvalidResultError, match="status"):
        outbox.submit(INTEGRATION, "o1", {"status": "DONE", "result_url": URL})
    assert redis.keys("*") == []


def test_a_key_of_the_wrong_type_writes_nothing(redis: Redis, outbox: Outbox) -> None:
    redis.set(outbox.keys.outbox_index("pending"), "junk")
    with pytest.raises(WrongKeyTypeError, match="outbox-pending"):
        outbox.submit(INTEGRATION, "o1", body())
    assert sorted(k.decode() for k in redis.keys("*")) == [outbox.keys.outbox_index("pending")]


# -- writing --------------------------------------------------------------------------------


def test_a_write_records_the_result_written_with_kombos_warnings(
    redis: Redis, outbox: Outbox, sim: Simulator, namespace: str
) -> None:
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body())
    assert run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order) == "written"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written" and not record.lost_answer
    assert sim.orders(INTEGRATION, "COMPLETED")[0]["id"] == order
    assert json.loads(redis.hget(Keys(namespace).results(INTEGRATION), order))["status"] == (  # type: ignore[arg-type]
        "COMPLETED"
    )
    assert outbox.counts() == {"pending": 0, "written": 1, "failed": 0}
    assert [e["event"] for e in outbox.timeline_events(INTEGRATION, order)] == [
        "result_submitted",
        "result_written",
    ]


def test_a_429_is_retried_after_kombos_retry_after(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    sim.faults.retry_after = 7
    sim.fail_next("rate_limit")
    clock = Clock()
    outbox = Outbox(redis, outbox.namespace, outbox.queue.name, clock=clock)
    outbox.submit(INTEGRATION, order, body())
    writer = make_writer(outbox, sim, clock=clock)
    assert run_pending(outbox, writer, INTEGRATION, order) == "rescheduled"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "pending" and record.attempts == 1
    assert record.next_attempt_at == pytest.approx(clock.now + 7)
    assert "RATE_LIMIT" in (record.last_error or "")
    scheduled = outbox.queue.scheduled_job_registry.get_job_ids()
    assert scheduled == [record.job_id]
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"


def test_a_lost_answer_is_recorded_written_not_failed(outbox: Outbox, sim: Simulator) -> None:
    order = first_order(sim)
    sim.fail_next("drop_answer")  # Kombo applies the write; the answer never arrives
    outbox.submit(INTEGRATION, order, body())
    writer = make_writer(outbox, sim)
    assert run_pending(outbox, writer, INTEGRATION, order) == "rescheduled"
    # The next attempt is refused (no longer OPEN); reading the order back shows it landed.
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written" and record.lost_answer
    assert sim.applied_writes[(INTEGRATION, order)] == 1


def test_a_refusal_kombo_does_not_hold_fails_with_kombos_message(
    outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    sim.set_status(INTEGRATION, order, "REJECTED")
    outbox.submit(INTEGRATION, order, body())
    assert run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order) == "failed"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "failed"
    assert record.reason is not None
    assert "order is REJECTED in Kombo" in record.reason and "only while OPEN" in record.reason
    assert outbox.counts()["failed"] == 1
    assert [r.order_id for r in outbox.in_state("failed")] == [order]


def test_an_unknown_order_fails_permanently(outbox: Outbox, sim: Simulator) -> None:
    outbox.submit(INTEGRATION, "nope", body())
    assert run_pending(outbox, make_writer(outbox, sim), INTEGRATION, "nope") == "failed"
    record = outbox.get(INTEGRATION, "nope")
    assert record is not None and "does not exist" in (record.reason or "")


def test_retries_end_after_the_horizon(outbox: Outbox, sim: Simulator) -> None:
    order = first_order(sim)
    clock = Clock()
    outbox = Outbox(outbox.redis, outbox.namespace, outbox.queue.name, clock=clock)
    outbox.submit(INTEGRATION, order, body())
    writer = make_writer(outbox, sim, clock=clock, retry_for=3600)
    sim.fail_next("server_error", 2)
    assert run_pending(outbox, writer, INTEGRATION, order) == "rescheduled"
    clock.now += 3601
    assert run_pending(outbox, writer, INTEGRATION, order) == "failed"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and "gave up after 2 attempts" in (record.reason or "")


def test_a_failed_write_can_be_retried(outbox: Outbox, sim: Simulator) -> None:
    outbox.submit(INTEGRATION, "nope", body())
    run_pending(outbox, make_writer(outbox, sim), INTEGRATION, "nope")
    receipts = outbox.retry_failed()
    assert [r.order_id for r in receipts] == ["nope"]
    assert outbox.counts() == {"pending": 1, "written": 0, "failed": 0}


def test_a_job_that_does_not_own_the_write_does_nothing(outbox: Outbox, sim: Simulator) -> None:
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body())
    assert make_writer(outbox, sim).run(INTEGRATION, order, "result-someone-else") == "stale"
    assert sim.applied_writes[(INTEGRATION, order)] == 0


def test_a_full_write_cap_hands_the_write_on_without_counting_an_attempt(
    outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    clock = Clock()
    outbox = Outbox(outbox.redis, outbox.namespace, outbox.queue.name, clock=clock)
    leases = WriteLeases(outbox.redis, outbox.keys, 2, clock=clock)
    assert leases.acquire(INTEGRATION, "a", 30) and leases.acquire(INTEGRATION, "b", 30)
    assert not leases.acquire(INTEGRATION, "c", 30)
    outbox.submit(INTEGRATION, order, body())
    writer = make_writer(outbox, sim, cap=2, clock=clock, lease_wait=0)
    assert run_pending(outbox, writer, INTEGRATION, order) == "rescheduled"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.attempts == 0
    assert sim.applied_writes[(INTEGRATION, order)] == 0
    clock.now += 31  # the holders died: their leases expire
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"


def test_leases_never_exceed_the_cap_under_contention(redis: Redis, namespace: str) -> None:
    leases = WriteLeases(redis, Keys(namespace), 5)
    held: list[str] = []
    lock = threading.Lock()

    def grab(i: int) -> None:
        if leases.acquire(INTEGRATION, f"h{i}", 30):
            with lock:
                held.append(f"h{i}")

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(held) == 5 and leases.in_flight(INTEGRATION) == 5
    leases.release(INTEGRATION, held[0])
    assert leases.in_flight(INTEGRATION) == 4


def test_the_public_submit_result_goes_through_the_outbox(redis_url: str, namespace: str) -> None:
    import dispatcher
    from dispatcher.settings import load_settings

    settings = load_settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace)
    redis = Redis.from_url(redis_url)
    receipt = dispatcher.submit_result(INTEGRATION, "o9", body(), redis=redis, settings=settings)
    assert isinstance(receipt, dispatcher.ResultReceipt) and receipt.outcome == "queued"
    again = dispatcher.submit_result(INTEGRATION, "o9", body(), redis=redis, settings=settings)
    assert again.outcome == "duplicate"
    assert redis.llen(f"rq:queue:{namespace}-results") == 1
    redis.close()


def test_status_and_metrics_show_results(
    redis_url: str, redis: Redis, namespace: str, sim: Simulator
) -> None:
    from dispatcher.ops.status import take_snapshot
    from dispatcher.settings import load_settings
    from dispatcher.store.timeline import mark_provisioned
    from dispatcher.web.metrics import exposition

    settings = load_settings(REDIS_URL=redis_url, DISPATCHER_NAMESPACE=namespace)
    outbox = Outbox.from_settings(redis, settings)
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body())
    run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order)
    outbox.submit(INTEGRATION, "nope", body())
    run_pending(outbox, make_writer(outbox, sim), INTEGRATION, "nope")
    old = Clock(1_000_000.0)
    mark_provisioned(redis, Keys(namespace), INTEGRATION, "o-old", ["log"], clock=old)
    snapshot = take_snapshot(redis, settings)
    assert snapshot.as_dict()["results"] == {"pending": 0, "written": 1, "failed": 1}
    assert any("1 order provisioned more than 14 days ago has no result" in p
               for p in snapshot.problems)  # fmt: skip
    assert any("1 result failed to be written" in p for p in snapshot.problems)
    text = exposition(lambda: snapshot).decode()
    assert f'dispatcher_results_written_total{{integration="{INTEGRATION}"}} 1.0' in text
    assert f'dispatcher_results_failed_total{{integration="{INTEGRATION}"}} 1.0' in text
    assert 'dispatcher_results{state="pending"} 0.0' in text
    assert "dispatcher_result_write_seconds_bucket" in text


# -- one truth: a body on its way, the written receipt, the read-back -----------------------


def begun(outbox: Outbox, order: str) -> str:
    """An attempt of the pending body is on its way (what a write job does just before the
    PUT); returns the job id."""
    record = outbox.get(INTEGRATION, order)
    assert record is not None
    assert outbox.begin(record, record.job_id) == "begun"
    return record.job_id


def test_a_different_final_body_while_a_final_one_is_on_its_way_is_refused(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    first = outbox.submit(INTEGRATION, order, body(score=1, max_score=5))
    begun(outbox, order)
    with pytest.raises(ResultInFlightError, match=f"order {order} .*COMPLETED.* being written"):
        outbox.submit(INTEGRATION, order, body(score=4, max_score=5))
    with pytest.raises(FinalResultError):  # a partial one neither: Kombo would refuse it
        outbox.submit(INTEGRATION, order, body("OPEN"))
    same = outbox.submit(INTEGRATION, order, body(score=1, max_score=5))
    assert same.outcome == "duplicate" and same.submission_id == first.submission_id
    assert run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order) == "written"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.body == sim.results[(INTEGRATION, order)]
    assert record.attempts == 2  # the one begun above (never sent here) and the real one


def test_a_body_after_a_partial_one_on_its_way_is_written_next_by_the_same_job(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    outbox.submit(INTEGRATION, order, body("OPEN", score=1, max_score=5))
    job = begun(outbox, order)
    assert outbox.submit(INTEGRATION, order, body("OPEN", score=2, max_score=5)).outcome == (
        "queued"
    )
    last = outbox.submit(INTEGRATION, order, body(score=5, max_score=5))
    assert last.outcome == "replaced"  # the waiting body, not the one on its way
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.next_submission_id == last.submission_id
    assert len(queued(redis, outbox)) == 1  # one job for all of it
    assert make_writer(outbox, sim).run(INTEGRATION, order, job) == "written"
    assert sim.applied_writes[(INTEGRATION, order)] == 2  # the partial one, then the last
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.state == "written"
    assert record.submission_id == last.submission_id and record.next_submission_id is None
    assert record.body == sim.results[(INTEGRATION, order)] and record.attempts == 1
    assert outbox.counts()["pending"] == 0


def test_the_written_body_again_answers_its_receipt_another_is_refused(
    redis: Redis, outbox: Outbox, sim: Simulator
) -> None:
    order = first_order(sim)
    first = outbox.submit(INTEGRATION, order, body(score=3, max_score=5))
    run_pending(outbox, make_writer(outbox, sim), INTEGRATION, order)
    # Even once the outbox hash expired, the results record keeps the written receipt.
    redis.delete(outbox.keys.outbox(INTEGRATION, order))
    again = outbox.submit(INTEGRATION, order, body(score=3, max_score=5))
    assert again.outcome == "duplicate" and again.written
    assert (again.submission_id, again.submitted_at) == (
        first.submission_id,
        round(first.submitted_at, 3),
    )
    with pytest.raises(FinalResultError, match="already written"):
        outbox.submit(INTEGRATION, order, body(score=4, max_score=5))
    assert outbox.counts()["pending"] == 0


def test_a_result_for_an_order_never_dispatched_stores_nothing(
    redis: Redis, outbox: Outbox
) -> None:
    with pytest.raises(UnknownOrderError, match="never dispatched"):
        outbox.submit(INTEGRATION, "o1", body(), require_dispatched=True)
    redis.hset(outbox.keys.seen(INTEGRATION), "o2", "rejected:1700000000")
    with pytest.raises(UnknownOrderError, match="rejected it"):
        outbox.submit(INTEGRATION, "o2", body(), require_dispatched=True)
    assert redis.keys("*") == [outbox.keys.seen(INTEGRATION).encode()]
    redis.hset(outbox.keys.seen(INTEGRATION), "o3", "1700000000")
    assert outbox.submit(INTEGRATION, "o3", body(), require_dispatched=True).outcome == "queued"


def echoing_writer(outbox: Outbox, sim: Simulator, shown: dict[str, Any] | None) -> ResultWriter:
    """A writer whose Kombo shows a result with each order it reads back: ``shown``, or the
    one it holds when None."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = sim.handle(request)
        if request.method != "GET" or not request.url.path.endswith("/assessment/orders"):
            return answer
        data = json.loads(answer.content)
        for order in data["data"]["results"]:
            order["result"] = shown or sim.results.get((INTEGRATION, order["id"]))
        return httpx.Response(answer.status_code, json=data)

    client = KomboClient(
        DEFAULT_API_KEY, sim.base_url, transport=httpx.MockTransport(handle), retry_budget=0
    )
    return ResultWriter(
        outbox, WriteLeases(outbox.redis, outbox.keys, 10), client, sleep=lambda s: None,
        rng=random.Random(1),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("shown", "verdict"),
    [
        ("none", READ_BACK_STATUS_ONLY),
        ("held", READ_BACK_MATCHED),
        ("other", READ_BACK_OTHER),
    ],
)
def test_after_a_lost_answer_the_read_back_decides_which_body_landed(
    outbox: Outbox, sim: Simulator, shown: str, verdict: str
) -> None:
    order = first_order(sim)
    sim.fail_next("drop_answer")  # Kombo applies the write; the answer never arrives
    outbox.submit(INTEGRATION, order, body(score=3, max_score=5))
    other = {"result_url": "https://elsewhere.example/r/9", "score": 1}
    if shown == "none":
        writer = make_writer(outbox, sim)
    else:
        writer = echoing_writer(outbox, sim, other if shown == "other" else None)
    assert run_pending(outbox, writer, INTEGRATION, order) == "rescheduled"
    assert run_pending(outbox, writer, INTEGRATION, order) == "written"
    record = outbox.get(INTEGRATION, order)
    assert record is not None and record.lost_answer and record.read_back == verdict
    assert record.attempts == 2
    if shown == "other":
        assert record.kombo_result == other
        assert record.as_dict()["result_url"] == other["result_url"]
    else:
        assert record.kombo_result is None and record.result_url == URL
