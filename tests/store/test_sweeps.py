"""The sweep record: one type writes and reads ``{ns}:sweep:{integration}``."""

from __future__ import annotations

import dataclasses

from redis import Redis

from dispatcher.store.sweeps import ERROR_COUNT, INVALID_ORDER_FIELDS, SweepRecord

# The hash's field names are deployed data: a rename would orphan every record in Redis.
DEPLOYED_FIELDS = {
    "last_attempt_at", "duration", "consecutive_failures", "last_sweep_at", "watermark",
    "orders_seen", "orders_new", "pages", "last_sweep_kind", "full_sweep_at", "generation",
    "last_error", "last_error_code", "last_error_at", "invalid_orders", "last_invalid_order",
    "last_invalid_at", "error_count",
}  # fmt: skip


def test_the_field_names_are_those_of_deployed_data() -> None:
    assert {f.name for f in dataclasses.fields(SweepRecord)} == DEPLOYED_FIELDS
    assert ERROR_COUNT in DEPLOYED_FIELDS and set(INVALID_ORDER_FIELDS) <= DEPLOYED_FIELDS


def test_a_record_written_to_redis_reads_back_typed(redis: Redis) -> None:
    record = SweepRecord(
        last_attempt_at=1700000000.25, duration=1.5, consecutive_failures=0,
        last_sweep_at=1700000000.25, watermark=1699999999.0, orders_seen=40, orders_new=3,
        pages=2, last_sweep_kind="full", full_sweep_at=1699999999.0, generation=7,
        last_error="integration x: KOMBO.X: no", last_error_code="", last_error_at=1.0,
        invalid_orders=1, last_invalid_order="order o: bad", last_invalid_at=2.0,
    )  # fmt: skip
    redis.hset("sweep", mapping=record.to_fields())
    redis.hincrby("sweep", ERROR_COUNT, 2)
    assert SweepRecord.from_hash(redis.hgetall("sweep")) == dataclasses.replace(
        record, error_count=2
    )


def test_a_partial_record_writes_only_its_fields_and_garbage_reads_as_absent() -> None:
    assert SweepRecord(last_attempt_at=3.0, consecutive_failures=2).to_fields() == {
        "last_attempt_at": 3.0,
        "consecutive_failures": 2,
    }
    assert SweepRecord(error_count=4).to_fields() == {}  # counted with HINCRBY, never set
    read = SweepRecord.from_hash(
        {b"watermark": b"soon", b"pages": b"1.5", b"generation": b"", b"other": b"x", b"\xff": b"y"}
    )
    assert read == SweepRecord()
    assert SweepRecord.from_hash({}) == SweepRecord()
