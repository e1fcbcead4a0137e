"""The dramatiq baseline's actor, imported by ``dramatiq`` worker processes (bench/dispatch.py).

    dramatiq --processes 2 --threads 50 --path bench _dramatiq_jobs

dramatiq binds actors to a global broker when they are declared, so this module makes the
broker at import, from ``BENCH_DRAMATIQ_REDIS_URL`` (the bench's private Redis) and in its own
key namespace, so nothing of it mixes with the dispatcher's RQ keys on the same server.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

NAMESPACE = "bench-dramatiq"
QUEUE = "bench-sleep"
ACTOR = "sleep_job"

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_DRAMATIQ_REDIS_URL"], namespace=NAMESPACE))


# No retries: a failure goes straight to the dead-letter set, where the bench sees it (a
# retry would only delay the job, and the bench would wait on it instead of failing).
@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def sleep_job(seconds: float) -> None:
    """A job that waits on I/O for ``seconds``: the dispatcher's handler waits on its vendor."""
    time.sleep(seconds)
