"""A threaded ``dispatcher worker`` running a test chain, for the crash and shutdown tests.

Run as a script with the dispatcher's environment (DISPATCHER_WORKER_THREADS...) plus
TEST_PREFIX (Redis keys of this test) and TEST_BURST (``1``: stop when the queue is empty):

- ``hold`` counts its runs per order (``<prefix>:runs``), remembers the idempotency key of
  each (``<prefix>:keys``), then waits (at most 60 s) until ``<prefix>:release`` exists;
- ``effect`` counts its runs per order (``<prefix>:effects``): the side effect after the hold.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis import Redis

from dispatcher import HandlerContext, Order
from dispatcher.logs import configure_logging
from dispatcher.settings import load_settings
from dispatcher.worker.jobs import Runtime
from dispatcher.worker.run import run_worker


class Hold:
    name = "hold"

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        with self.redis.pipeline() as pipe:
            pipe.hincrby(f"{self.prefix}:runs", order.id, 1)
            pipe.sadd(f"{self.prefix}:keys", f"{order.id}={context.idempotency_key}")
            pipe.execute()
        deadline = time.monotonic() + 60
        while not self.redis.exists(f"{self.prefix}:release") and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"held": True}


class Effect:
    name = "effect"

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        self.redis.hincrby(f"{self.prefix}:effects", order.id, 1)
        return {"done": True}


def main() -> None:
    configure_logging("WARNING")
    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    prefix = os.environ["TEST_PREFIX"]
    chain: list[Any] = [Hold(redis, prefix), Effect(redis, prefix)]
    burst = os.environ.get("TEST_BURST") == "1"
    run_worker(settings, redis, burst=burst, runtime=Runtime(settings, chain))


if __name__ == "__main__":
    main()
