"""Whoever can write Redis cannot run code through a job (issue 22, V4).

Given a real Redis and real `dispatcher worker`, `dispatcher failed` and `dispatcher web`
processes; when a job is planted in the queue whose data and meta are pickles that run a
command when loaded (what the dispatcher wrote with RQ's default serializer before JSON jobs),
or a JSON job naming another function, or a failed job whose meta is such a pickle; then no
process loads it (the command's marker file never appears), the worker fails the job without
running it and says so in one line naming the job, and `dispatcher failed` and the console's
Failures page list it as one line. A normal order still goes poll → worker → provisioned with
JSON jobs, and `rq info` still reads the queue.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import click
import httpx
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from dispatcher.store.ledger import JOB_FUNCTION
from dispatcher.store.rq_internals import JOB_SERIALIZER, failed_key, queue_key
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from support import dispatcher_env, dispatcher_web
from support.ops import dispatcher as _run

pytestmark = pytest.mark.redis

INTEGRATION = "acme:HostileJobs"
TOKEN = "console-token-for-hostile-jobs-0123"


class _RunsCommand:
    """Pickles to a call of ``os.system``: loading it runs ``command``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def _env(redis_url: str, namespace: str, **extra: str) -> dict[str, str]:
    values = {
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": INTEGRATION,
        "DISPATCHER_NAMESPACE": namespace,
        "DISPATCHER_HANDLERS": "log",
        **extra,
    }
    return dispatcher_env(redis_url, **values)


def _plant_pickled_job(redis: Redis, queue: str, marker: Path) -> str:
    """A job as the dispatcher queued it before JSON jobs (RQ's default serializer, pickle),
    but with a payload and a meta that run ``id > marker`` when unpickled."""
    job = Queue(
        queue, connection=redis
    ).enqueue_call(  # RQ's default: pickle
        JOB_FUNCTION,
        kwargs={"integration_id": INTEGRATION, "order": _RunsCommand(f"id > {marker}")},
        meta={"order_id": "PLANTED", "namespace": _RunsCommand(f"id > {marker}.meta")},
        job_id=f"planted-{uuid.uuid4().hex[:8]}",
    )
    stored = redis.hget(job.key, "data")
    assert stored is not None and zlib.decompress(stored).startswith(b"\x80")  # a pickle
    return job.id


def _plant_failed_job_with_pickled_meta(redis: Redis, queue: str, marker: Path) -> str:
    """A failed job whose meta is a pickle running ``id > marker`` when loaded."""
    job_id = _plant_pickled_job(redis, queue, marker)
    redis.lrem(queue_key(queue), 0, job_id)
    job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)  # loads nothing
    job.set_status(JobStatus.FAILED)
    FailedJobRegistry(queue, connection=redis).add(job, ttl=3600)
    meta = redis.hget(job.key, "meta")
    assert meta is not None and meta.startswith(b"\x80")
    return job_id


def _lines_naming(text: str, job_id: str) -> list[str]:
    return [line for line in text.splitlines() if job_id in line]


# -- the worker ---------------------------------------------------------------------------------


# Every worker class: RQ's forking worker, in-process, threaded, and the results workers.
WORKERS = {
    "forking": ([], {}, "orders"),
    "in-process": ([], {"DISPATCHER_FORK_PER_JOB": "false"}, "orders"),
    "threaded": (["--threads", "3"], {}, "orders"),
    # RQ's worker pool builds its workers with its own queue class (it was RQ's plain Queue:
    # no check at all of what a pool worker took).
    "pool": (["--processes", "2"], {"DISPATCHER_FORK_PER_JOB": "false"}, "orders"),
    "results": (["--results", "--threads", "2"], {}, "results"),
}


@pytest.mark.parametrize("mode", list(WORKERS))
def test_a_pickled_job_planted_in_the_queue_is_refused_by_the_worker_in_one_line(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path, mode: str
) -> None:
    # Given a pickled job that runs a command when loaded, on the queue the worker works
    args, extra, kind = WORKERS[mode]
    marker = tmp_path / "ran"
    env = _env(redis_url, namespace, **extra)
    queue = f"{namespace}-{kind}"
    planted = _plant_pickled_job(redis, queue, marker)
    # When `dispatcher worker` works the queue
    worker = _run(["worker", "--burst", *args], env)
    # Then nothing ran: no file, no traceback; the job is failed, not run, in one line
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output
    assert not marker.exists() and not Path(f"{marker}.meta").exists()
    assert "Traceback" not in output, output
    lines = _lines_naming(output, planted)
    assert len(lines) == 1, output
    assert "refused, not run" in lines[0] and "pickle" in lines[0], lines
    assert "dispatcher replay" in lines[0], lines
    assert redis.zscore(failed_key(queue), planted) is not None
    assert redis.llen(queue_key(queue)) == 0
    assert redis.llen(f"{queue_key(queue)}:intermediate") == 0
    if kind == "results":
        return
    # and `dispatcher failed` lists it as one line, still without loading it
    failed = _run(["failed"], env)
    assert failed.returncode == 0, failed.stderr
    assert len(_lines_naming(failed.stdout, planted)) == 1, failed.stdout
    assert not marker.exists() and not Path(f"{marker}.meta").exists()


@pytest.mark.slow
@pytest.mark.parametrize("pool", [[], ["--processes", "2"]], ids=["one", "pool"])
def test_a_json_job_naming_another_function_is_refused_by_the_worker(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path, pool: list[str]
) -> None:
    # Given a JSON job, as a Redis writer can plant one, that would call os.system
    marker = tmp_path / "ran"
    env = _env(redis_url, namespace)
    queue = f"{namespace}-orders"
    job = Queue(queue, connection=redis, serializer=JOB_SERIALIZER).enqueue_call(
        "os.system", args=[f"id > {marker}"], job_id=f"planted-{uuid.uuid4().hex[:8]}"
    )
    # When the worker (or a pool of them) works the queue
    worker = _run(["worker", "--burst", *pool], env)
    # Then the function is never imported nor called, and one line says why
    output = worker.stdout + worker.stderr
    assert worker.returncode == 0, output
    assert not marker.exists()
    lines = _lines_naming(output, job.id)
    assert len(lines) == 1 and "it calls 'os.system'" in lines[0], output
    failed = _run(["failed", "--json"], env)
    (row,) = [json.loads(line) for line in failed.stdout.splitlines()]
    assert row["job_id"] == job.id and "refused, not run" in row["reason"], row


# -- reading failed jobs ------------------------------------------------------------------------


def test_dispatcher_failed_lists_a_failed_job_with_a_pickled_meta_without_loading_it(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    env = _env(redis_url, namespace)
    planted = _plant_failed_job_with_pickled_meta(redis, f"{namespace}-orders", marker)
    shown = _run(["failed"], env)
    assert shown.returncode == 0, shown.stderr
    as_json = _run(["failed", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    assert not marker.exists() and not Path(f"{marker}.meta").exists()
    lines = _lines_naming(shown.stdout, planted)
    assert len(lines) == 1 and "is a pickle" in lines[0], shown.stdout
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert row["job_id"] == planted and row["order_id"] is None
    assert "Traceback" not in shown.stderr + as_json.stderr


def test_the_console_failures_page_lists_a_pickled_failed_job_without_loading_it(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # Given a failed job whose meta runs a command when unpickled, and `dispatcher web`
    marker = tmp_path / "ran"
    planted = _plant_failed_job_with_pickled_meta(redis, f"{namespace}-orders", marker)
    env = _env(redis_url, namespace, DISPATCHER_CONSOLE_TOKEN=TOKEN)
    log = tmp_path / "web.log"
    with dispatcher_web(env, log) as url, httpx.Client(base_url=url, timeout=10) as client:
        # When an operator logs in and opens Failures (HTTP over a real socket)
        form = client.get("/")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        login = client.post("/console/login", data={"token": TOKEN, "csrf": csrf.group(1)})
        assert login.status_code == 303, login.text
        page = client.get("/console/failures")
    # Then the page lists the job in one row, and nothing was loaded
    assert page.status_code == 200, page.text
    assert not marker.exists() and not Path(f"{marker}.meta").exists()
    rows = [row for row in page.text.split("<tr") if planted in row]
    assert len(rows) == 1, page.text
    assert "is a pickle" in rows[0]
    assert "Traceback" not in log.read_text(), log.read_text()


# -- the normal path, with JSON jobs ------------------------------------------------------------


def _rq_info(redis_url: str, *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "rq"), "info", "--url", redis_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return click.unstyle(result.stdout)


def test_an_order_goes_poll_worker_provisioned_with_json_jobs_and_rq_info_reads_the_queue(
    redis: Redis, redis_url: str, namespace: str, vendor: VendorAPI
) -> None:
    sim = Simulator([INTEGRATION], 3, closed=0, seed=22)
    queue = f"{namespace}-orders"
    with sim.serve() as server:
        env = _env(
            redis_url,
            namespace,
            KOMBO_BASE_URL=server.url,
            DISPATCHER_HANDLERS="provision_http",
            PROVISION_URL=vendor.url,
        )
        polled = _run(["poll", "--once"], env)
        assert polled.returncode == 0, polled.stderr
        # Every job's data and meta are JSON
        job_ids = [job_id.decode() for job_id in redis.lrange(queue_key(queue), 0, -1)]
        assert len(job_ids) == 3
        for job_id in job_ids:
            data, meta = redis.hmget(f"rq:job:{job_id}", ["data", "meta"])
            assert data is not None and meta is not None
            assert json.loads(data)[0] == JOB_FUNCTION
            assert json.loads(meta)["integration_id"] == INTEGRATION
        # `rq info` reads the queue
        assert re.search(rf"^queue {re.escape(queue)} 3\b", _rq_info(redis_url, "--raw"), re.M)
        worker = _run(["worker", "--burst"], env)
        assert worker.returncode == 0, worker.stderr
    assert sum(vendor.succeeded_per_key().values()) == 3
    assert redis.zcard(f"rq:finished:{queue}") == 3
    raw = _rq_info(redis_url, "--raw", "--only-queues")
    assert f"queue {queue} 0, 0 executing, 3 finished, 0 failed" in raw, raw
