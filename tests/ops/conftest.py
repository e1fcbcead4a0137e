"""Fixtures of the operations tests (tests/ops)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from dispatcher.testing.sim import Simulator
from support import wait_until
from support.ops import TESTS, env_for, settings_for, sweep


@pytest.fixture
def blocked_worker(
    redis: Redis, redis_url: str, sim: Simulator, namespace: str
) -> Iterator[dict[str, Any]]:
    """A real worker process busy on one order of the first integration until released
    (``sim``: the module's simulator)."""
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="blocks")
    sweep(redis, settings, sim, integration_ids=[sim.integration_ids[0]])
    started, release = f"{namespace}-test:started", f"{namespace}-test:release"
    env = env_for(
        redis_url,
        settings,
        TEST_CHAIN="blocks",
        TEST_STARTED_KEY=started,
        TEST_RELEASE_KEY=release,
    )
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "_test_worker.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: redis.exists(started) == 1, what="the worker to start a job")
        order_id = redis.get(started)
        assert order_id is not None
        yield {"settings": settings, "env": env, "order_id": order_id.decode(), "proc": proc}
    finally:
        redis.set(release, 1)
        _, stderr = proc.communicate(timeout=60)
        redis.delete(started, release)
    assert proc.returncode == 0, stderr
