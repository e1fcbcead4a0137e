"""Test support: the helpers the tests call, in one place (fixtures are in the conftest.py
of each folder, those of several folders in tests/conftest.py).

This module holds the small builders every folder uses; the submodules those of one
subject: :mod:`support.ops` (a sweep, a worker and the CLI in process), :mod:`support.web`
(uvicorn in a thread, `dispatcher web` as deployed, raw sockets), :mod:`support.console`,
:mod:`support.webhook`, :mod:`support.results`, :mod:`support.hostile` (planted secrets) and
:mod:`support.redis_topology` (TLS, Sentinel). No test module imports another.

The private redis-server and ``free_port`` are the package's own stand-ins
(:mod:`dispatcher.testing`), re-exported here for the tests that import them from here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.testing import free_port as free_port
from dispatcher.testing.redis_server import RedisServer as RedisServer


def slow_beyond(values: Iterable[Any], keep: int) -> list[Any]:
    """Parametrize values whose first ``keep`` run by default and the rest in the slow step
    (``pytest -m slow``): each behaviour is checked on every change, every case in CI."""
    return [
        v if i < keep else pytest.param(v, marks=pytest.mark.slow) for i, v in enumerate(values)
    ]


def wait_until(
    predicate: Callable[[], object], timeout: float = 30, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail naming ``what`` after ``timeout``
    seconds. How a test waits for something to happen: a fixed sleep is either too long
    (slow) or too short (flaky)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_while_progressing(
    process: Any, progress: Callable[[], object], stall: float = 60, what: str = "process"
) -> None:
    """Wait for ``process`` (a Popen) to exit for as long as it makes progress: fail only
    when ``progress()`` (a count of jobs done, say) stayed the same for ``stall`` seconds.
    A fixed budget for the whole run is what a loaded machine exceeds; a stall is a bug."""
    last, since = progress(), time.monotonic()
    while process.poll() is None:
        time.sleep(0.05)
        now = progress()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall:
            process.kill()
            process.wait()
            raise AssertionError(f"{what} made no progress for {stall}s (at {last!r})")


def order_payload(order_id: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid order as Kombo returns it."""
    order: dict[str, Any] = {
        "id": order_id,
        "package_id": "typescript_test",
        "status": "OPEN",
        "candidate": {
            "remote_id": "c1",
            "email": f"{order_id.lower()}@example.com",
            "first_name": "Zoë",
            "last_name": "Doe",
            "phone": None,
        },
        "application": {"remote_id": None},
        "job": {
            "remote_id": "j1",
            "name": "Bottle Opener",
            "job_code": None,
            "description": "<p>Open bottles</p>",
            "location": None,
            "hiring_team": [
                {
                    "remote_id": "u1",
                    "email": "jane@example.com",
                    "first_name": "Jane",
                    "last_name": "Doe",
                    "hiring_team_roles": ["RECRUITER"],
                }
            ],
        },
    }
    order.update(overrides)
    return order


def dispatcher_env(redis_url: str, **extra: str) -> dict[str, str]:
    """An environment for a ``dispatcher`` subprocess, isolated from the caller's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KOMBO_", "DISPATCHER_", "REDIS_", "PROVISION_", "SMTP_", "NOTIFY_"))
    }
    env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def text(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (RQ's work horse leaves its worker's
    process group, so killing the group is not enough to lose a machine's worth of work)."""
    import signal as _signal

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    doomed, stack = [], [pid]
    while stack:
        current = stack.pop()
        doomed.append(current)
        stack.extend(children.get(current, []))
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, _signal.SIGKILL)


@contextlib.contextmanager
def web_process(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A `dispatcher web` process as deployed (its output in ``log``); yields it and its port
    once /healthz answers, and stops it with SIGTERM (then SIGKILL) on the way out."""
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dispatcher_web(env: dict[str, str], log: Path) -> Iterator[str]:
    """:func:`web_process`, yielding its URL."""
    with web_process(env, log) as (_, port):
        yield f"http://127.0.0.1:{port}"


def dispatch_orders(
    redis: Any, orders: int, *, seed: int = 5, queue: str = "dispatcher-orders"
) -> list[str]:
    """Dispatch ``orders`` new orders of one simulated integration (the ledger's one script,
    as the poller does); their ids."""
    from rq import Queue

    from dispatcher.kombo.models import Order
    from dispatcher.store.ledger import Ledger
    from dispatcher.testing.sim import Simulator

    sim = Simulator(1, orders, closed=0, seed=seed)
    integration_id = sim.integration_ids[0]
    batch = [Order.model_validate(o) for o in sim.orders(integration_id)]
    Ledger(redis, Queue(queue, connection=redis), "dispatcher").dispatch(integration_id, batch)
    return [o.id for o in batch]


def queued_job_ids(redis: Any, queue: str = "dispatcher-orders") -> list[str]:
    """The job ids waiting to run: on the worker queue, then on each integration's list
    (dispatcher.store.fair: at most a window of jobs is on the queue at once)."""
    keys = [f"rq:queue:{queue}"]
    keys += sorted(
        k.decode() if isinstance(k, bytes) else k for k in redis.scan_iter(f"rq:queue:{queue}@*")
    )
    return [
        item.decode() if isinstance(item, bytes) else item
        for key in keys
        for item in redis.lrange(key, 0, -1)
    ]


def queued_jobs(redis: Any, queue: str = "dispatcher-orders") -> list[Any]:
    """The jobs waiting to run (:func:`queued_job_ids`), as RQ jobs."""
    from rq.job import Job

    from dispatcher.store.rq_internals import JOB_SERIALIZER

    ids = queued_job_ids(redis, queue)
    return [j for j in Job.fetch_many(ids, connection=redis, serializer=JOB_SERIALIZER) if j]


def count_main_thread_takes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, how many jobs each batch take of a threaded worker's main thread
    returned (``FairFeed.take``; a thread's own take rides with a success instead)."""
    from dispatcher.store.fair import FairFeed

    takes: list[int] = []
    take = FairFeed.take

    def counted(self: FairFeed, count: int) -> Any:
        taken = take(self, count)
        takes.append(len(taken))
        return taken

    monkeypatch.setattr(FairFeed, "take", counted)
    return takes
