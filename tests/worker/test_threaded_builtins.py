"""Every built-in handler shared by 50 threads of one worker, against the stand-ins (a vendor
API and a webhook receiver on real sockets, a real SMTP server): each order's effects happen
exactly once, and no order's data reaches another's request."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from dispatcher.kombo.models import Order
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import Simulator
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker
from dispatcher.worker.steps import step_key
from dispatcher_handlers.log import LogHandler
from dispatcher_handlers.notify_email import EmailSettings, NotifyEmailHandler
from dispatcher_handlers.notify_webhook import NotifyWebhookHandler, WebhookSettings
from dispatcher_handlers.provision_http import ProvisionHttpHandler, ProvisionSettings

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]
QUEUE = "dispatcher-orders"
NS = "dispatcher"
ROLES = {"RECRUITER", "HIRING_MANAGER"}


@pytest.mark.slow
def test_each_builtin_with_50_threads_has_exactly_once_effects(
    redis: Redis, redis_url: str, vendor: VendorAPI, mailbox: Mailbox
) -> None:
    # Given 150 orders, a vendor API and a webhook receiver that answer after 50 ms
    vendor.slow = 0.05
    hook = VendorAPI(slow=0.05)
    try:
        sim = Simulator(1, 150, closed=0, seed=50)
        integration = sim.integration_ids[0]
        orders = [Order.model_validate(o) for o in sim.orders(integration)]
        Ledger(redis, Queue(QUEUE, connection=redis), NS).dispatch(integration, orders)
        chain: list[Any] = [
            LogHandler(),
            ProvisionHttpHandler(ProvisionSettings(PROVISION_URL=vendor.url)),
            NotifyEmailHandler(EmailSettings(SMTP_URL=mailbox.url, NOTIFY_FROM="t@acme.example")),
            NotifyWebhookHandler(WebhookSettings(NOTIFY_WEBHOOK_URL=hook.url)),
        ]
        settings = Settings(REDIS_URL=redis_url, DISPATCHER_WORKER_THREADS=50)
        # When one worker process runs them with 50 threads sharing the handler instances
        run_worker(settings, redis, burst=True, runtime=Runtime(settings, chain))
        hook_calls = list(hook.calls)
    finally:
        hook.close()
    # Then every order finished
    finished = FinishedJobRegistry(queue=Queue(QUEUE, connection=redis))
    jobs = [
        j
        for j in Job.fetch_many(finished.get_job_ids(), connection=redis, serializer=JOB_SERIALIZER)
        if j
    ]
    assert len(jobs) == len(orders)
    by_id = {o.id: o for o in orders}

    def key(order_id: str, handler: str) -> str:
        return step_key(NS, integration, order_id, handler)

    # provision_http: one call per order, with that order's key and that order's body
    assert vendor.calls_per_key() == Counter({key(o.id, "provision_http"): 1 for o in orders})
    for call in vendor.calls:
        assert call.idempotency_key == key(call.body["id"], "provision_http")
        assert call.body["candidate"] == by_id[call.body["id"]].to_payload()["candidate"]
    # notify_webhook: one post per order, naming that order's own test link
    assert Counter(c.idempotency_key for c in hook_calls) == Counter(
        {key(o.id, "notify_webhook"): 1 for o in orders}
    )
    webhook_key_to_order = {key(o.id, "notify_webhook"): o.id for o in orders}
    for call in hook_calls:
        order_id = webhook_key_to_order[call.idempotency_key or ""]
        links = re.findall(r"https://tests\.example/t/(\w+)", call.body["text"])
        assert links == [key(order_id, "provision_http")]
    # notify_email: one message per (order, distinct recipient), never twice
    expected = Counter()
    for order in orders:
        addresses = {
            m.email.lower()
            for m in order.job.hiring_team
            if m.email and ROLES.intersection(str(r) for r in m.hiring_team_roles)
        }
        expected.update(addresses)
    assert mailbox.by_recipient() == expected
    assert set(mailbox.message_ids().values()) == {1}
    # log: each job's output is its own order's
    for job in jobs:
        steps = job.return_value()["steps"]
        order = by_id[job.return_value()["order_id"]]
        assert steps["log"]["package_id"] == order.package_id
        assert steps["provision_http"]["test_url"].endswith(key(order.id, "provision_http"))
