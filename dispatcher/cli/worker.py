"""``dispatcher worker``: the worker process."""

from __future__ import annotations

import click

from dispatcher.cli._common import connect_redis, fail, settings_of
from dispatcher.plugins import HandlerConfigError


@click.command()
@click.option(
    "--burst",
    is_flag=True,
    help="Exit once the queue is empty, saying what is left (retries scheduled, failed).",
)
@click.option(
    "--wait-retries",
    type=click.FloatRange(0),
    is_flag=False,
    flag_value=900.0,
    default=None,
    metavar="[SECONDS]",
    help="With --burst: also wait for the jobs scheduled for a retry and work them, for at "
    "most SECONDS (900 without a value).",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes (RQ's worker pool).",
)
@click.pass_context
def worker(ctx: click.Context, burst: bool, wait_retries: float | None, processes: int) -> None:
    """Run the handler chain on queued orders (RQ workers with the scheduler)."""
    from dispatcher.worker.jobs import Runtime
    from dispatcher.worker.worker import run_worker

    settings = settings_of(ctx)
    if wait_retries is not None and not burst:
        fail("--wait-retries: only with --burst (a worker without it waits for everything)")
    if wait_retries is not None and processes > 1:
        fail("--wait-retries: only with one process (--processes 1)")
    try:
        runtime = Runtime.from_settings(settings)
    except HandlerConfigError as exc:
        fail(str(exc))
    redis = connect_redis(settings)
    run_worker(
        settings,
        redis,
        burst=burst,
        processes=processes,
        runtime=runtime,
        wait_retries=wait_retries,
    )
