"""A `dispatcher worker --burst` whose one handler blocks until the test releases it.

Run as a script with the dispatcher's environment plus TEST_STARTED_KEY and TEST_RELEASE_KEY:
the handler sets the first to the order id, then waits (at most 60 s) for the second.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis import Redis

from dispatcher import HandlerContext, Order
from dispatcher.jobs import Runtime
from dispatcher.logs import configure_logging
from dispatcher.settings import load_settings
from dispatcher.worker import run_worker


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


def main() -> None:
    configure_logging("WARNING")
    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    run_worker(settings, redis, burst=True, runtime=Runtime(settings, [Blocks(redis)]))


if __name__ == "__main__":
    main()
