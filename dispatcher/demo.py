"""``dispatcher demo``: the whole pipeline in one process, on fakeredis and the simulator."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from rq import Queue, SimpleWorker
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from .jobs import Runtime, install_runtime
from .kombo import KomboClient
from .ledger import Ledger
from .poller import Poller
from .settings import Settings
from .simulator import DEFAULT_API_KEY, Simulator

__all__ = ["run_demo"]


def run_demo(*, integrations: int = 3, orders: int = 12, echo: Callable[[str], None]) -> int:
    """Sweep, work, sweep again; print a summary. Returns the exit status."""
    try:
        import fakeredis
    except ImportError:
        echo("demo: needs the demo extra: pip install 'kombo-dispatcher[demo]'")
        return 2
    started = time.monotonic()
    simulator = Simulator(integrations, orders, seed=7)
    redis = fakeredis.FakeRedis()
    settings = Settings(KOMBO_API_KEY=DEFAULT_API_KEY, DISPATCHER_HANDLERS="log")
    queue = Queue(settings.queue, connection=redis)
    ledger = Ledger(redis, queue, settings.namespace)
    install_runtime(Runtime.from_settings(settings))
    logging.getLogger("rq").setLevel(logging.WARNING)
    echo(
        f"demo: simulated Kombo with {integrations} integrations, {orders} OPEN orders each; "
        "fakeredis; handlers: " + ", ".join(settings.handlers)
    )
    with KomboClient(
        DEFAULT_API_KEY, simulator.base_url, transport=simulator.transport(), retry_budget=5
    ) as client:
        poller = Poller(client, ledger, simulator.integration_ids, page_size=5)
        first = poller.sweep()
        echo(
            f"sweep 1: {first.pages} pages, {first.orders_seen} OPEN orders found, "
            f"{first.orders_new} enqueued (queue length {queue.count})"
        )
        SimpleWorker([queue], connection=redis).work(burst=True)
        finished = FinishedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        echo(f"worker: {finished.count} orders handled, {failed.count} failed")
        second = poller.sweep()
        echo(
            f"sweep 2: {second.orders_seen} OPEN orders found, {second.orders_new} enqueued "
            "(every order was already dispatched)"
        )
    handled: Counter[str] = Counter()
    for job in queue.job_class.fetch_many(finished.get_job_ids(), connection=redis):
        if job is not None:
            handled[job.meta.get("integration_id", "?")] += 1
    width = max(len(i) for i in simulator.integration_ids)
    echo("")
    echo(f"{'INTEGRATION':<{width}}  FOUND  ENQUEUED  HANDLED")
    for one in first.results:
        echo(
            f"{one.integration_id:<{width}}  {one.orders_seen:>5}  {one.orders_new:>8}  "
            f"{handled[one.integration_id]:>7}"
        )
    total_handled = sum(handled.values())
    echo(f"{'total':<{width}}  {first.orders_seen:>5}  {first.orders_new:>8}  {total_handled:>7}")
    echo(f"\ndone in {time.monotonic() - started:.1f}s")
    ok = (
        not first.errors
        and not second.errors
        and second.orders_new == 0
        and total_handled == first.orders_new == first.orders_seen
    )
    return 0 if ok else 1
