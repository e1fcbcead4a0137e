"""A ``dispatcher worker`` running one paced step, for the fairness and cap tests.

Run as a script with the dispatcher's environment (DISPATCHER_WORKER_THREADS...) plus
TEST_PREFIX (Redis keys of this test) and TEST_SECONDS (how long each step takes). The step
``pace``, per order:

- records when it started (``<prefix>:started``, order id -> unix time);
- joins ``<prefix>:running:<integration>`` (members ``<pid>:<order id>``; members of dead
  processes are dropped first: a SIGKILLed worker's jobs are not running any more) and
  records how many of the integration's orders it saw running, itself included
  (``<prefix>:seen:<integration>``, a list), then leaves it after TEST_SECONDS;
- counts its completed runs (``<prefix>:done``, order id -> runs).
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker is a zombie until its parent reaps it: it runs nothing any more.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Pace:
    name = "pace"

    def __init__(self, redis: Redis, prefix: str, seconds: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.seconds = seconds

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        integration = context.integration_id
        running = f"{self.prefix}:running:{integration}"
        self.redis.hsetnx(f"{self.prefix}:started", order.id, repr(time.time()))
        for member in self.redis.smembers(running):
            if not _alive(int(member.split(b":", 1)[0])):
                self.redis.srem(running, member)
        me = f"{os.getpid()}:{order.id}"
        with self.redis.pipeline() as pipe:
            pipe.sadd(running, me)
            pipe.scard(running)
            _, count = pipe.execute()
        self.redis.rpush(f"{self.prefix}:seen:{integration}", count)
        time.sleep(self.seconds)
        self.redis.srem(running, me)
        self.redis.hincrby(f"{self.prefix}:done", order.id, 1)
        return {"paced": True}


def main() -> None:
    configure_logging("WARNING")
    settings = load_settings()
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    chain: list[Any] = [Pace(redis, os.environ["TEST_PREFIX"], float(os.environ["TEST_SECONDS"]))]
    run_worker(settings, redis, burst=False, runtime=Runtime(settings, chain))


if __name__ == "__main__":
    main()
