"""The job hashes Ledger.dispatch writes are the ones RQ's Job.create(...).save() would write
(but for the job data, stored uncompressed), and RQ runs them."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from dispatcher.handler import HandlerContext
from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.ledger import JOB_FUNCTION, Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER, job_hash_items
from dispatcher.testing.sim import Simulator
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker

pytestmark = pytest.mark.redis

# Set when the job is created and enqueued: the same instant for a whole page, not per order.
_TIMESTAMPS = {b"created_at", b"enqueued_at"}


def rq_hash(job: Job) -> dict[bytes, bytes]:
    # As redis-py encodes them: str.encode, which gives a str enum's value (status "queued").
    items = [item if isinstance(item, bytes) else item.encode() for item in job_hash_items(job)]
    return dict(zip(items[::2], items[1::2], strict=True))


def test_every_job_hash_of_a_page_is_what_rq_would_save(redis: Redis) -> None:
    # Given a page of generated orders (some with fields the schema does not know)
    sim = Simulator(1, 60, closed=0, seed=3)
    integration_id = sim.integration_ids[0]
    raw = sim.orders(integration_id)
    assert any(set(order) - {"id", "package_id", "status", "candidate", "application", "job"}
               for order in raw) or any("custom_fields" in order["candidate"] for order in raw)  # fmt: skip
    orders = [Order.model_validate(order) for order in raw]
    ledger = Ledger(redis, Queue("dispatcher-orders", connection=redis), "dispatcher")
    # When the page is dispatched
    assert len(ledger.dispatch(integration_id, orders).enqueued) == 60
    # Then each job's hash is RQ's for that order, field for field
    for order in orders:
        expected = rq_hash(ledger._build_job(integration_id, order))
        stored = redis.hgetall(Job.key_for(ledger.job_id(integration_id, order.id)))
        assert set(stored) == set(expected)
        # The data as RQ serializes it, not zlibbed (RQ reads both; it compresses on save),
        # and data and meta JSON: nothing a reader could be made to unpickle
        data = stored.pop(b"data")
        assert data == zlib.decompress(expected.pop(b"data"))
        assert json.loads(data)[0] == "dispatcher.worker.jobs.process_order"
        assert json.loads(stored[b"meta"])["order_id"] == order.id
        assert {k: v for k, v in stored.items() if k not in _TIMESTAMPS} == {
            k: v for k, v in expected.items() if k not in _TIMESTAMPS
        }
        # and RQ reads it back as the job of that order
        job = Job.fetch(
            ledger.job_id(integration_id, order.id), connection=redis, serializer=JOB_SERIALIZER
        )
        assert job.func_name == "dispatcher.worker.jobs.process_order"
        assert job.args == []
        got: dict[str, Any] = job.kwargs
        assert got == {
            "integration_id": integration_id,
            "order": order.to_payload(),
            "namespace": ledger.namespace,
        }
        assert job.meta == {
            "order_id": order.id,
            "integration_id": integration_id,
            "package_id": order.package_id,
            "namespace": ledger.namespace,
            "chain": [],
            "source": "poll",
        }
        assert job.description == (
            f"order {order.id} integration {integration_id} package {order.package_id}"
        )


def test_a_worker_runs_the_dispatched_jobs_and_rq_compresses_their_data(
    redis: Redis, redis_url: str
) -> None:
    sim = Simulator(1, 5, closed=0, seed=4)
    integration_id = sim.integration_ids[0]
    orders = [Order.model_validate(order) for order in sim.orders(integration_id)]
    queue = Queue("dispatcher-orders", connection=redis, serializer=JOB_SERIALIZER)
    ledger = Ledger(redis, queue, "dispatcher")
    ledger.dispatch(integration_id, orders)
    settings = Settings(REDIS_URL=redis_url)
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [_Echo()]))
    for order in orders:
        job_id = ledger.job_id(integration_id, order.id)
        job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
        assert job.get_status() == "finished"
        assert job.return_value()["steps"]["echo"] == {"order": order.id}
        zlib.decompress(redis.hget(Job.key_for(job_id), "data"))  # saved compressed by RQ


class _Echo:
    name = "echo"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, str]:
        return {"order": order.id}


def test_jobs_queued_before_the_layout_change_still_find_their_function() -> None:
    # RQ stores the function's import path in the job; queues at an upgrade hold the old one.
    from rq.utils import import_attribute

    from dispatcher.worker.jobs import process_order

    assert import_attribute("dispatcher.jobs.process_order") is process_order
    assert import_attribute(JOB_FUNCTION) is process_order
