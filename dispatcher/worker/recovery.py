"""Putting back jobs whose worker vanished: abandoned (started, heartbeat run out) and
stranded (popped, never started), deciding by where each job is rather than by its status.

A job's status and its place (queue, registry) are written by different commands in RQ, and a
crash, a failover or an RQ quirk can leave one without the other; a status alone once made the
requeue drop a retried job whose worker died between the two writes (issue 21). So a job is
left alone only if it is finished, or failed and in the failed registry, or scheduled and in
the scheduled registry, or queued and in its queue (or popped, in its intermediate list);
anything else is put back on its queue (rq_internals.REQUEUE_ABANDONED, REQUEUE_STRANDED),
but for an id without a job hash, which RQ would only pop and drop again.

RQ's own passes over the same structures are not run: ``StartedJobRegistry.cleanup`` drops
an expired entry whose job's status is not ``started`` (the same status check), and the
intermediate list's cleanup fails a popped job after a minute by a first-seen mark that may be
left from an earlier visit (rq_internals.RQ_CLEANED_ELSEWHERE).

First-seen marks belong to one visit of a job to the intermediate list: set only while the job
is there (MARK_FIRST_SEEN), deleted when a worker starts it (:func:`forget_first_seen`) or
when it is put back. A mark left from an earlier visit made a retried job look stranded the
moment it was popped again, and run twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from redis import Redis

from dispatcher.store.lua import LuaScript
from dispatcher.store.rq_internals import (
    MARK_FIRST_SEEN,
    NO_JOB,
    REQUEUE_ABANDONED,
    REQUEUE_STRANDED,
    REQUEUED,
    RETURN_POPPED,
    failed_key,
    first_seen_key,
    intermediate_job_ids,
    intermediate_key,
    job_key,
    list_search_mode,
    queue_key,
    scheduled_key,
    started_job_id,
    started_key,
)
from dispatcher.store.rq_internals import first_seen as rq_first_seen
from dispatcher.store.wrongtype import WrongKeyTypeError

__all__ = [
    "STRANDED_AFTER",
    "forget_first_seen",
    "requeue_abandoned",
    "requeue_entry",
    "requeue_stranded",
    "return_popped",
]

log = logging.getLogger("dispatcher.worker")

# How long a job may sit popped but not started before it counts as stranded (a live worker
# takes microseconds).
STRANDED_AFTER = 10


def _run(
    connection: Redis, script: LuaScript, keys: list[str], args: list[Any], job_id: str
) -> int | None:
    """Run a requeue script; a key of the wrong type is logged (naming it) and skipped, the job
    left where it is, rather than stopping the worker's maintenance (None)."""
    try:
        return int(cast("int", script(connection, keys, args)))
    except WrongKeyTypeError as exc:
        log.error("cannot requeue job %s: %s", job_id, exc)
        return None


def requeue_entry(connection: Redis, queue: str, entry: bytes | str, job_id: str) -> bool:
    """Take one started-registry entry off the registry and put its job back on ``queue``
    unless it is where its status says; True if it was put back."""
    keys = [
        started_key(queue),
        job_key(job_id),
        queue_key(queue),
        intermediate_key(queue),
        failed_key(queue),
        scheduled_key(queue),
        first_seen_key(queue, job_id),
    ]
    args = [entry, job_id, list_search_mode(connection)]
    answer = _run(connection, REQUEUE_ABANDONED, keys, args, job_id)
    if answer == NO_JOB:
        log.warning("job %s: its worker stopped heartbeating and its job hash is gone", job_id)
    return answer == REQUEUED


def requeue_abandoned(connection: Redis, queue: str, now: float | None = None) -> int:
    """Put back the jobs of ``queue`` whose heartbeat ran out; returns how many."""
    entries = connection.zrangebyscore(started_key(queue), 0, time.time() if now is None else now)
    requeued = 0
    for entry in cast("list[bytes]", entries):
        job_id = started_job_id(entry)
        if requeue_entry(connection, queue, entry, job_id):
            requeued += 1
            log.warning("requeued job %s: its worker stopped heartbeating", job_id)
    return requeued


def requeue_stranded(connection: Redis, queue: str) -> int:
    """Put back jobs a dead worker popped but never started; returns how many.

    A job is stranded once two passes saw it popped and not started ``STRANDED_AFTER`` apart
    (RQ rescues them only after a minute, through the retry schedule, which a dead worker's
    scheduler lock can block for another minute)."""
    job_ids = intermediate_job_ids(connection, queue)
    if not job_ids:
        return 0
    started = {
        started_job_id(entry)
        for entry in cast("list[bytes]", connection.zrange(started_key(queue), 0, -1))
    }
    mode = list_search_mode(connection)
    requeued = 0
    for job_id in job_ids:
        if job_id in started:
            continue
        seen = rq_first_seen(connection, queue, job_id)
        if seen is None:
            keys = [intermediate_key(queue), first_seen_key(queue, job_id)]
            _run(connection, MARK_FIRST_SEEN, keys, [job_id, time.time(), mode], job_id)
            continue
        if time.time() - seen.timestamp() < STRANDED_AFTER:
            continue
        keys = [
            intermediate_key(queue),
            queue_key(queue),
            job_key(job_id),
            failed_key(queue),
            scheduled_key(queue),
            first_seen_key(queue, job_id),
        ]
        answer = _run(connection, REQUEUE_STRANDED, keys, [job_id, mode], job_id)
        if answer == REQUEUED:
            requeued += 1
            log.warning("requeued job %s: popped by a worker that never started it", job_id)
        elif answer == NO_JOB:
            log.info("dropped job id %s from the intermediate list: no such job", job_id)
    return requeued


def return_popped(connection: Redis, queue: str, job_id: str) -> bool:
    """Put a job this worker just popped back at the end of ``queue``, untouched."""
    keys = [intermediate_key(queue), queue_key(queue), first_seen_key(queue, job_id)]
    return _run(connection, RETURN_POPPED, keys, [job_id], job_id) == REQUEUED


def forget_first_seen(connection: Redis, queue: str, job_id: str) -> None:
    """A worker started ``job_id``: its visit to the intermediate list is over."""
    connection.delete(first_seen_key(queue, job_id))
