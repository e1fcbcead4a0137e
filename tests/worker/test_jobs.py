from __future__ import annotations

from typing import Any

import pytest

from dispatcher import HandlerContext, Order, PermanentFailure, Settings
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.worker.jobs import HandlerFailed, Runtime, install_runtime, process_order
from dispatcher.worker.steps import step_key
from support import order_payload

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


class Slow:
    name = "slow"

    def handle(self, order: Order, context: HandlerContext) -> None:
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # Python-level work, interruptible
            time.sleep(0.01)


def test_each_handler_runs_under_its_own_timeout() -> None:
    settings = Settings(DISPATCHER_HANDLER_TIMEOUTS="slow=0.2")
    install_runtime(Runtime(settings=settings, chain=[Slow()]))  # type: ignore[list-item]
    import time

    started = time.monotonic()
    with pytest.raises(
        HandlerFailed, match=r"handler slow failed on order A .*: timed out after 0.2s"
    ):
        process_order(INTEGRATION, order_payload("A"))
    assert time.monotonic() - started < 2


def test_a_timeout_does_not_fire_after_a_fast_handler_returns() -> None:
    settings = Settings(DISPATCHER_HANDLER_TIMEOUT="0.05")
    install_runtime(Runtime(settings=settings, chain=[Recording("fast", {"x": 1})]))
    import time

    assert process_order(INTEGRATION, order_payload("A"))["steps"] == {"fast": {"x": 1}}
    time.sleep(0.1)  # an un-cancelled timer would raise into this thread now


def test_steps_are_recorded_and_skipped_when_the_job_runs_again() -> None:
    """Given a chain whose second step fails once, when RQ retries the job, then the first
    step does not run again and the second gets the first one's recorded output."""
    import fakeredis
    from rq import Queue, Retry, SimpleWorker

    class FailsOnce(Recording):
        def handle(self, order: Order, context: HandlerContext) -> Any:
            self.contexts.append(context)
            if len(self.contexts) == 1:
                raise RuntimeError("vendor hiccup")
            return {"seen": dict(context.outputs)}

    first = Recording("provision", {"test_url": "https://t/1"})
    second = FailsOnce("notify")
    install(first, second)
    redis = fakeredis.FakeRedis()
    queue = Queue("q", connection=redis, serializer=JOB_SERIALIZER)
    job = queue.enqueue(process_order, INTEGRATION, order_payload("A"), retry=Retry(max=2))
    SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER).work(burst=True)
    assert len(first.contexts) == 1
    assert len(second.contexts) == 2
    assert second.contexts[1].attempt == 2
    assert job.return_value()["steps"]["notify"] == {
        "seen": {"provision": {"test_url": "https://t/1"}}
    }
    stats = redis.hgetall("dispatcher:step-stats")
    assert stats == {
        b"provision:completed": b"1",
        b"notify:failed": b"1",
        b"notify:completed": b"1",
    }


def test_a_permanent_failure_is_not_retried_by_rq() -> None:
    import fakeredis
    from rq import Queue, Retry, SimpleWorker

    handler = Recording("provision", error=PermanentFailure("unknown package"))
    install(handler)
    redis = fakeredis.FakeRedis()
    queue = Queue("q", connection=redis, serializer=JOB_SERIALIZER)
    job = queue.enqueue(process_order, INTEGRATION, order_payload("A"), retry=Retry(max=3))
    SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER).work(burst=True)
    assert len(handler.contexts) == 1
    assert job.get_status() == "failed"


def test_the_last_steps_record_marks_the_chains_end_in_the_same_script() -> None:
    """Given a two-step chain, the second step's record also writes the order's timeline
    event and provisioned mark (one script); run again with every step done, the chain's end
    is recorded on its own; a key of the wrong type refuses the whole script."""
    import fakeredis
    from rq import Queue, SimpleWorker

    from dispatcher.store.keys import Keys, order_ref
    from dispatcher.store.timeline import read_events

    install(Recording("provision", {"test_url": "https://t/1"}), Recording("notify", None))
    redis = fakeredis.FakeRedis()
    keys = Keys("dispatcher")
    queue = Queue("q", connection=redis, serializer=JOB_SERIALIZER)
    worker = SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER)
    job = queue.enqueue(process_order, INTEGRATION, order_payload("A"))
    worker.work(burst=True)
    assert job.get_status() == "finished"
    events = read_events(redis, keys, INTEGRATION, "A")
    assert [(e["event"], e["steps"]) for e in events] == [("provisioned", ["provision", "notify"])]
    assert redis.zscore(keys.provisioned, order_ref(INTEGRATION, "A")) is not None
    # Every step done before: the chain's end alone
    queue.enqueue(process_order, INTEGRATION, order_payload("A"))
    worker.work(burst=True)
    assert len(read_events(redis, keys, INTEGRATION, "A")) == 2
    # A timeline of the wrong type: the last step is not recorded either (one script)
    redis.set(keys.timeline(INTEGRATION, "B"), "planted")
    broken = queue.enqueue(process_order, INTEGRATION, order_payload("B"))
    worker.work(burst=True)
    assert broken.get_status() == "failed"
    steps = redis.hgetall(keys.steps(INTEGRATION, "B"))
    assert sorted(steps) == [b"_attempts", b"provision"]


def test_the_attempt_number_reaches_the_jobs_meta_with_the_steps_record_or_failure() -> None:
    """process_order saves the attempt number with its next write (a step's record or its
    failure), not in a round trip of its own: either way it is in Redis after the run."""
    import fakeredis
    from rq import Queue, Retry, SimpleWorker
    from rq.job import Job

    class FailsOnce(Recording):
        def handle(self, order: Order, context: HandlerContext) -> Any:
            self.contexts.append(context)
            if len(self.contexts) == 1:
                raise RuntimeError("vendor hiccup")
            return {}

    install(FailsOnce("provision"))
    redis = fakeredis.FakeRedis()
    queue = Queue("q", connection=redis, serializer=JOB_SERIALIZER)
    job = queue.enqueue(process_order, INTEGRATION, order_payload("A"), retry=Retry(max=2))
    worker = SimpleWorker([queue], connection=redis, serializer=JOB_SERIALIZER)
    worker.work(burst=True, max_jobs=1)
    stored = Job.fetch(job.id, connection=redis, serializer=JOB_SERIALIZER)
    assert stored.meta["attempt"] == 1 and stored.get_status() != "finished"
    worker.work(burst=True)
    stored = Job.fetch(job.id, connection=redis, serializer=JOB_SERIALIZER)
    assert stored.meta["attempt"] == 2 and stored.get_status() == "finished"
