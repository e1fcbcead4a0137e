"""Support for the operations tests: run a sweep and a worker in process, call the CLI."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from redis import Redis
from rq import Queue

from dispatcher import HandlerContext, Order, PermanentFailure, Settings
from dispatcher.cli import cli
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.poller import Poller
from dispatcher.poller.report import SweepReport
from dispatcher.poller.telemetry import RequestStats
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.worker.classes import DispatcherSimpleWorker
from dispatcher.worker.jobs import Runtime, install_runtime
from support import dispatcher_env

# The tests' folder: tests/_test_worker.py is `dispatcher worker --burst` running a test chain.
TESTS = Path(__file__).resolve().parents[1]


def settings_for(redis_url: str, sim: Simulator, namespace: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "REDIS_URL": redis_url,
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": ",".join(sim.integration_ids),
        "DISPATCHER_NAMESPACE": namespace,
        **extra,
    }
    return Settings(**values)


def env_for(redis_url: str, settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a CLI call with these settings (and no others leaking in)."""
    values = {
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": ",".join(settings.kombo_integration_ids),
        "DISPATCHER_NAMESPACE": settings.namespace,
        "DISPATCHER_HANDLERS": ",".join(settings.handlers),
        **extra,
    }
    return dispatcher_env(redis_url, **values)


def sweep(
    redis: Redis,
    settings: Settings,
    sim: Simulator,
    *,
    integration_ids: Sequence[str] | None = None,
    page_size: int = 7,
) -> SweepReport:
    """One sweep, as ``dispatcher poll --once`` does it, on the in-process simulator."""
    stats = RequestStats()
    ledger = Ledger(
        redis,
        Queue(settings.queue, connection=redis),
        settings.namespace,
        job_options=JobOptions(
            timeout=settings.job_timeout,
            result_ttl=settings.result_ttl,
            failure_ttl=settings.failure_ttl,
        ),
    )
    with KomboClient(
        DEFAULT_API_KEY,
        sim.base_url,
        transport=sim.transport(),
        retry_budget=0,
        observer=stats.observe,
    ) as client:
        poller = Poller(
            client,
            ledger,
            integration_ids or settings.kombo_integration_ids,
            page_size=page_size,
            request_stats=stats,
        )
        return poller.sweep()


def work(
    redis: Redis,
    settings: Settings,
    chain: Sequence[Any],
    *,
    plain: bool = False,
    logging_level: str = "WARNING",
) -> None:
    """Work the queue until empty in this process (RQ's SimpleWorker, ours unless plain)."""
    from rq import SimpleWorker

    install_runtime(Runtime(settings=settings, chain=list(chain)))
    worker_class = SimpleWorker if plain else DispatcherSimpleWorker
    # RQ installs its own SIGINT/SIGTERM handlers and leaves them: put pytest's back.
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # A plain `rq worker` reads the dispatcher's jobs with `--serializer json`.
        worker = worker_class(
            [Queue(settings.queue, connection=redis)], connection=redis, serializer=JOB_SERIALIZER
        )
        worker.work(burst=True, logging_level=logging_level)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class Returns:
    """A handler returning a fixed output."""

    def __init__(self, name: str, output: dict[str, Any] | None = None) -> None:
        self.name = name
        self.output = output or {"ok": True}

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return dict(self.output)


class FailsFor:
    """A handler failing permanently for the given order ids, passing the others."""

    def __init__(
        self,
        name: str,
        order_ids: set[str],
        reason: str = "vendor said no",
        error: type[Exception] = PermanentFailure,
    ) -> None:
        self.name = name
        self.order_ids = order_ids
        self.reason = reason
        self.error = error

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        if order.id in self.order_ids:
            raise self.error(f"{self.reason} ({order.package_id})")
        return {"passed": order.id}


def invoke(args: list[str], env: dict[str, str], **kwargs: Any) -> Result:
    """Run the CLI in process; stdout and stderr are kept apart (``result.stdout/stderr``)."""
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False, **kwargs)


def run(*args: str, input: str | None = None) -> Result:
    """Run the CLI in process in the environment as it is (the ``env`` fixture sets it)."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


def dispatcher(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (the tests' one copy of it)."""
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
