"""A worker SIGKILLed exactly between a retried job's status write and its move to the scheduled
registry loses no order (issue 21): real redis-server, real `dispatcher poll` and `dispatcher
worker` processes, a vendor that answers 503 to the first attempt.

The worker under test stops itself at that point (DISPATCHER_TEST_RETRY_WINDOW, see
dispatcher/worker/retry.py) and the test kills its whole process tree there; a second worker
must then provision the order. Before the fix RQ had written ``status=scheduled`` at that
point, the job sat in no queue and no registry but the started one, and the abandoned-job
requeue dropped it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from dispatcher.store import rq_internals as rqi
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.base import RECOVERY_BOUND
from dispatcher.worker.retry import RETRY_WINDOW_ENV
from support import dispatcher_env, kill_tree, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]  # waits out a heartbeat (~25 s)
QUEUE = "dispatcher-orders"

MODES: dict[str, tuple[list[str], dict[str, str]]] = {
    "forking": ([], {"DISPATCHER_FORK_PER_JOB": "true"}),
    "in-process": ([], {"DISPATCHER_FORK_PER_JOB": "false"}),
    "threaded": (["--threads", "4"], {}),
}


def _worker(env: dict[str, str], args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "worker", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_a_worker_killed_between_a_retrys_status_and_its_registry_move_loses_no_order(
    mode: str, tmp_path: Path, vendor: VendorAPI, redis: Redis, redis_url: str
) -> None:
    args, extra = MODES[mode]
    vendor.failures.append(503)  # the first attempt asks for a retry
    sim = Simulator(1, 1, closed=0, seed=21)
    integration_id = sim.integration_ids[0]
    with sim.serve() as server:
        env = dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=server.url,
            KOMBO_API_KEY=DEFAULT_API_KEY,
            KOMBO_INTEGRATION_IDS=integration_id,
            DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor.url,
            DISPATCHER_RETRY_BACKOFF="1",
            **extra,
        )
        subprocess.run(
            [sys.executable, "-m", "dispatcher", "poll", "--once"],
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        (job_id,) = [k.decode() for k in redis.lrange(rqi.queue_key(QUEUE), 0, -1)]
        # Given a worker that stops itself between the retry's status write and its registry
        # move, and is SIGKILLed there with its work horse
        window = tmp_path / "window"
        doomed = _worker({**env, RETRY_WINDOW_ENV: str(window)}, args)
        try:
            wait_until(window.exists, 60, "the worker to reach the retry window")
        finally:
            kill_tree(doomed.pid)
            doomed.wait()
        assert len(vendor.calls) == 1
        # When another worker runs
        survivor = _worker(env, args)
        try:
            # Then the order is provisioned: the job, back on the queue once its heartbeat
            # ran out, ran again
            wait_until(
                lambda: sum(vendor.succeeded_per_key().values()) == 1,
                RECOVERY_BOUND + 40,
                f"order job {job_id} provisioned (job status "
                f"{redis.hget(rqi.job_key(job_id), 'status')!r})",
            )
            wait_until(
                lambda: redis.hget(rqi.job_key(job_id), "status") == b"finished",
                30,
                "the job finished",
            )
        finally:
            survivor.send_signal(signal.SIGTERM)
            try:
                survivor.wait(30)
            except subprocess.TimeoutExpired:
                kill_tree(survivor.pid)
                survivor.wait()
    assert redis.zscore(rqi.finished_key(QUEUE), job_id) is not None
    assert len(vendor.succeeded_per_key()) == 1  # one idempotency key: one provisioning
