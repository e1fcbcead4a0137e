"""``dispatcher worker``: the worker process (the handler chain, or with ``--results`` the
results workers)."""

from __future__ import annotations

import click

from dispatcher.cli._common import connect_redis, fail, or_fail, settings_of
from dispatcher.handler import HandlerConfigError
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.results import RESULTS_THREADS, WriterRuntime, run_results_worker
from dispatcher.worker.run import WAIT_RETRIES_DEFAULT, run_worker


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
    flag_value=WAIT_RETRIES_DEFAULT,
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
@click.option(
    "--threads",
    type=click.IntRange(1, 1000),
    default=None,
    help="Jobs each worker process runs at once, each in a thread "
    "(default DISPATCHER_WORKER_THREADS, 1; with --results 16). Combines with --processes.",
)
@click.option(
    "--results",
    "results_",
    is_flag=True,
    help="Write queued results back to Kombo instead (DISPATCHER_RESULTS_QUEUE).",
)
def worker(
    ctx: click.Context,
    burst: bool,
    wait_retries: float | None,
    processes: int,
    threads: int | None,
    results_: bool,
) -> None:
    """Run the handler chain on queued orders (RQ workers with the scheduler).

    With --results: write the results of the outbox back to Kombo (the Procfile's
    ``results`` line); each process listens on the results queue only. There --threads
    (default 16, not DISPATCHER_WORKER_THREADS) is how many writes each process has in
    flight: a write mostly waits on Kombo.
    """
    settings = settings_of(ctx)
    if results_:
        # DISPATCHER_WORKER_THREADS sizes the handler workers; results take --threads only.
        write_threads = threads or RESULTS_THREADS
        redis = connect_redis(settings, role="worker")
        writer = or_fail(
            lambda: WriterRuntime.from_settings(settings, redis, threads=write_threads)
        )
        run_results_worker(
            settings,
            redis,
            burst=burst,
            processes=processes,
            threads=write_threads,
            runtime=writer,
        )
        return
    if wait_retries is not None and not burst:
        fail("--wait-retries: only with --burst (a worker without it waits for everything)")
    if wait_retries is not None and processes > 1:
        fail("--wait-retries: only with one process (--processes 1)")
    try:
        runtime = Runtime.from_settings(settings)
    except HandlerConfigError as exc:
        fail(str(exc))
    redis = connect_redis(settings, role="worker")
    run_worker(
        settings,
        redis,
        burst=burst,
        processes=processes,
        runtime=runtime,
        threads=threads,
        wait_retries=wait_retries,
    )
