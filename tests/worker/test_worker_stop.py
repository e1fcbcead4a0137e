"""A worker stops promptly: a burst on an empty queue exits in seconds, and SIGTERM ends an idle
worker (or a burst waiting for retries) without a traceback.

The stall this guards against: RQ's pubsub thread waited up to 60 s per get_message; once RQ's
shutdown unsubscribed, redis-py waited that long on its "subscribed" event, and redis-py 8.2's
PubSubWorkerThread.stop() joins the thread without a timeout (worker/base.py, PUBSUB_WAIT).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from redis import Redis
from rq import Queue

from dispatcher.store.rq_internals import scheduled_key
from dispatcher.testing.worker_stop import burst_seconds, sigterm_seconds
from dispatcher.worker.base import PUBSUB_WAIT
from dispatcher.worker.classes import DispatcherSimpleWorker
from support import dispatcher_env, wait_until

pytestmark = pytest.mark.redis

# Generous for a loaded 2-core machine (a Python start alone can take 2 s there), well under
# the 60 s of the stall.
BOUND = 15.0


def test_stopping_the_pubsub_thread_after_it_saw_the_unsubscribe_takes_no_60s(
    redis: Redis,
) -> None:
    # Given a worker subscribed to its command channel, whose pubsub thread has already read
    # the answer to RQ's UNSUBSCRIBE (the order that stalled: redis-py then waits on its
    # "subscribed" event for the thread's whole wait, and 8.2's stop() joins it)
    worker = DispatcherSimpleWorker([Queue("stop-test", connection=redis)], connection=redis)
    worker.subscribe()
    pubsub = worker.pubsub
    assert pubsub is not None
    wait_until(lambda: pubsub.subscribed, 10, "the subscription")
    pubsub.unsubscribe()
    wait_until(lambda: not pubsub.subscribed, 10, "the pubsub thread to read the unsubscribe")
    # When RQ's shutdown stops it
    started = time.monotonic()
    worker.unsubscribe()
    took = time.monotonic() - started
    # Then it is done within the thread's short wait, not RQ's 60 s
    assert took < PUBSUB_WAIT + 3, f"unsubscribe took {took:.1f}s"
    assert worker.pubsub_thread is not None and not worker.pubsub_thread.is_alive()


@pytest.mark.parametrize("mode", ["forking", "in-process", "threaded"])
def test_a_burst_on_an_empty_queue_exits_promptly(redis: Redis, redis_url: str, mode: str) -> None:
    took, output = burst_seconds(redis_url, mode)
    assert took < BOUND, f"{mode}: the burst took {took:.1f}s to exit\n{output[-2000:]}"
    assert "burst finished" in output


@pytest.mark.parametrize("mode", ["forking", "in-process", "threaded"])
def test_sigterm_stops_an_idle_worker_promptly_without_a_traceback(
    redis: Redis, redis_url: str, mode: str
) -> None:
    took, output = sigterm_seconds(redis, redis_url, mode)
    assert took < BOUND, f"{mode}: stopped {took:.1f}s after SIGTERM\n{output[-2000:]}"
    assert "Traceback" not in output and "StopRequested" not in output, output[-3000:]


def test_sigterm_stops_a_burst_waiting_for_retries_without_a_traceback(
    redis: Redis, redis_url: str
) -> None:
    # Given a burst worker waiting for a retry due in a minute (the worker of that burst is
    # done; its signal handlers still answer SIGTERM with RQ's StopRequested)
    redis.zadd(scheduled_key("dispatcher-orders"), {"order-later": time.time() + 60})
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "worker", "--burst", "--wait-retries", "120"],
        env=dispatcher_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "waiting" in line and "scheduled retry" in line:
                break
        assert process.poll() is None, "".join(lines)
        # When it is told to stop
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=90)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = "".join(lines) + rest
    # Then it stops at once, with its summary and no traceback
    assert took < BOUND, f"stopped {took:.1f}s after SIGTERM"
    assert "Traceback" not in output and "StopRequested" not in output, output[-3000:]
    assert "stopped on request while waiting for retries" in output
    assert "1 scheduled for a retry" in output
