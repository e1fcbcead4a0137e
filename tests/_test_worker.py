"""`dispatcher worker --burst` (RQ's forking worker, with its scheduler) running a test chain.

Run as a script with the dispatcher's environment plus TEST_CHAIN:

- ``blocks``: one handler that sets TEST_STARTED_KEY to the order id, then waits (at most
  60 s) for TEST_RELEASE_KEY to exist;
- ``flaky``: ``log``, then ``provision``, which fails for the order ids in TEST_FAIL_ORDERS
  (comma-separated) for good, asks for a retry for those in TEST_RETRY_ORDERS, and passes
  the others.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis import Redis

from dispatcher import HandlerContext, Order, PermanentFailure, RetryLater
from dispatcher.logs import configure_logging
from dispatcher.settings import load_settings
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker


class Blocks:
    name = "blocks"

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.started = os.environ["TEST_STARTED_KEY"]
        self.release = os.environ["TEST_RELEASE_KEY"]

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        self.redis.set(self.started, order.id)
        deadline = time.monotonic() + 60
        while not self.redis.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"released": True}


class Log:
    name = "log"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return {"package_id": order.package_id}


class Provision:
    name = "provision"

    def __init__(self) -> None:
        self.failing = set(filter(None, os.environ.get("TEST_FAIL_ORDERS", "").split(",")))
        self.flaky = set(filter(None, os.environ.get("TEST_RETRY_ORDERS", "").split(",")))

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        if order.id in self.failing:
            raise PermanentFailure("vendor refused the package")
        if order.id in self.flaky:
            raise RetryLater("vendor busy")
        return {"test_url": f"https://tests.example/{order.id}"}


def main() -> None:
    configure_logging("WARNING")
    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    chain: list[Any] = (
        [Blocks(redis)] if os.environ["TEST_CHAIN"] == "blocks" else [Log(), Provision()]
    )
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, chain))


if __name__ == "__main__":
    main()
