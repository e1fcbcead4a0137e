"""Worker processes: RQ workers on the dispatcher queue, running the handler chain."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Worker
from rq.worker_pool import WorkerPool

from .jobs import Runtime, install_runtime
from .settings import Settings

__all__ = ["run_worker"]


def run_worker(
    settings: Settings,
    redis: Redis,
    *,
    burst: bool = False,
    processes: int = 1,
    runtime: Runtime | None = None,
) -> None:
    """Run RQ worker(s) on the dispatcher queue until stopped (or until empty with ``burst``).

    The handler chain is loaded and checked first, so a missing or broken handler stops the
    worker at start with a HandlerConfigError instead of failing every order.
    """
    runtime = runtime or Runtime.from_settings(settings)
    install_runtime(runtime)
    queue = Queue(settings.queue, connection=redis)
    try:
        if processes <= 1:
            worker = Worker([queue], connection=redis)
            # The scheduler moves retried jobs back to the queue when their backoff expires.
            worker.work(burst=burst, with_scheduler=True, logging_level=settings.log_level)
        else:
            # Forked children inherit the installed runtime.
            pool = WorkerPool([queue], connection=redis, num_workers=processes)
            pool.start(burst=burst, logging_level=settings.log_level)
    finally:
        for handler in runtime.chain:
            close = getattr(handler, "close", None)
            if callable(close):
                close()
