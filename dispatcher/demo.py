"""``dispatcher demo``: the whole pipeline in one process.

The simulated Kombo API, fakeredis, the poller, and a worker running the built-in chain
``log → provision_http → notify_email`` against the stand-ins of :mod:`dispatcher.testing`:
the vendor's API and an SMTP server (aiosmtpd), in process on loopback. Nothing leaves the
machine.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from typing import Any

from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from dispatcher._text import plural
from dispatcher.kombo.client import KomboClient
from dispatcher.poller.poller import Poller
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.classes import DispatcherSimpleWorker
from dispatcher.worker.jobs import Runtime, install_runtime
from dispatcher_handlers.log import LogHandler
from dispatcher_handlers.notify_email import EmailSettings, NotifyEmailHandler
from dispatcher_handlers.provision_http import ProvisionHttpHandler, ProvisionSettings

__all__ = ["DemoUnavailable", "run_demo"]


class DemoUnavailable(Exception):
    """The demo's extra (fakeredis, aiosmtpd) is not installed; the message says how to."""


def run_demo(*, integrations: int = 3, orders: int = 12, echo: Callable[[str], None]) -> int:
    """Sweep, work, sweep again; print a summary. Returns the exit status.

    Raises :class:`DemoUnavailable` when the demo extra is not installed.
    """
    try:
        import aiosmtpd  # noqa: F401  (the mailbox's SMTP server)
        import fakeredis
    except ImportError as exc:
        raise DemoUnavailable(
            f"demo: needs the demo extra ({exc.name} is missing): "
            "pip install 'kombo-dispatcher[demo]'"
        ) from None
    started = time.monotonic()
    simulator = Simulator(integrations, orders, seed=7)
    vendor = VendorAPI()
    mailbox = Mailbox()
    redis = fakeredis.FakeRedis()
    settings = Settings(
        KOMBO_API_KEY=DEFAULT_API_KEY,
        DISPATCHER_HANDLERS="log,provision_http,notify_email",
    )
    provision = ProvisionHttpHandler(ProvisionSettings(PROVISION_URL=vendor.url))
    chain: list[Any] = [
        LogHandler(),
        provision,
        NotifyEmailHandler(
            EmailSettings(SMTP_URL=mailbox.url, NOTIFY_FROM="Acme Assessments <tests@acme.example>")
        ),
    ]
    install_runtime(Runtime(settings=settings, chain=chain))
    queue = Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER)
    ledger = Ledger(redis, queue, settings.namespace)
    logging.getLogger("rq").setLevel(logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    echo(
        f"demo: simulated Kombo with {integrations} integrations, {orders} OPEN orders each; "
        "fakeredis; handlers: " + " -> ".join(settings.handlers)
    )
    with (
        closing(vendor),
        closing(mailbox),
        KomboClient(
            DEFAULT_API_KEY, simulator.base_url, transport=simulator.transport(), retry_budget=5
        ) as client,
    ):
        poller = Poller(client, ledger, simulator.integration_ids, page_size=5)
        first = poller.sweep()
        echo(
            f"sweep 1: {plural(first.pages, 'page')}, {first.orders_seen} OPEN orders found, "
            f"{first.orders_new} enqueued "
            f"({queue.count + sum(ledger.feeder.waiting().values())} queued)"
        )
        DispatcherSimpleWorker([queue], connection=redis).work(burst=True, logging_level="WARNING")
        finished = FinishedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        echo(
            f"worker: {finished.count} orders handled, {failed.count} failed; "
            f"{len(vendor.succeeded_per_key())} tests provisioned, "
            f"{len(mailbox.messages)} emails sent"
        )
        second = poller.sweep()
        echo(
            f"sweep 2: {second.orders_seen} OPEN orders found, {second.orders_new} enqueued "
            "(every order was already dispatched)"
        )
    provision.close()
    handled: Counter[str] = Counter()
    for job in queue.job_class.fetch_many(
        finished.get_job_ids(), connection=redis, serializer=JOB_SERIALIZER
    ):
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
    echo(
        f"\nprovisioned tests: {len(vendor.succeeded_per_key())} (one per order, "
        f"{len(vendor.calls)} calls); "
        f"emails to hiring teams: {len(mailbox.messages)}"
    )
    echo(f"done in {time.monotonic() - started:.1f}s")
    ok = (
        not first.errors
        and not second.errors
        and second.orders_new == 0
        and total_handled == first.orders_new == first.orders_seen
        and len(vendor.succeeded_per_key()) == total_handled
    )
    return 0 if ok else 1
