"""``dispatcher worker``: the worker process."""

from __future__ import annotations

import click

from dispatcher.cli._common import connect_redis, fail, settings_of
from dispatcher.handler import HandlerConfigError


@click.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes (RQ's worker pool).",
)
@click.pass_context
@click.option(
    "--threads",
    type=click.IntRange(1, 1000),
    default=None,
    help="Jobs each worker process runs at once, each in a thread "
    "(default DISPATCHER_WORKER_THREADS, 1). Combines with --processes.",
)
def worker(ctx: click.Context, burst: bool, processes: int, threads: int | None) -> None:
    """Run the handler chain on queued orders (RQ workers with the scheduler)."""
    from dispatcher.worker.jobs import Runtime
    from dispatcher.worker.worker import run_worker

    settings = settings_of(ctx)
    try:
        runtime = Runtime.from_settings(settings)
    except HandlerConfigError as exc:
        fail(str(exc))
    redis = connect_redis(settings, role="worker")
    run_worker(settings, redis, burst=burst, processes=processes, runtime=runtime, threads=threads)
