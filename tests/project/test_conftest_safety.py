"""The ``redis`` fixture never flushes data that is not the tests' own.

Without a ``redis-server`` binary the tests use ``TEST_REDIS_URL``, which may name a shared
server. Each case runs a one-test pytest session in a subprocess (with this directory's
conftest as a plugin and no ``redis-server`` on its PATH) against a private server that holds
a key the tests did not write.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from support import RedisServer

pytestmark = pytest.mark.redis

TESTS = Path(__file__).resolve().parents[1]
PROBE = """
def test_probe(redis):
    redis.set("probe", "written by the tests")
"""


@pytest.fixture
def shared() -> Iterator[RedisServer]:
    """A private server standing in for a shared one: database 0 holds someone's key."""
    try:
        server = RedisServer()
    except RuntimeError:
        pytest.skip("needs the redis-server binary")
    server.start()
    try:
        Redis(port=server.port).set("foreign", "not the tests' data")
        yield server
    finally:
        server.cleanup()


def run_probe(tmp_path: Path, test_redis_url: str, *, ci: bool) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    # Not an xdist worker itself: the probe session must use the database it is given.
    dropped = {"CI", "TEST_REDIS_URL", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        TEST_REDIS_URL=test_redis_url,
        PATH=str(tmp_path),  # no redis-server here: the fixture falls back to TEST_REDIS_URL
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
    )
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
         "-q", str(probe)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_a_database_holding_keys_is_refused_with_a_skip_in_dev(
    shared: RedisServer, tmp_path: Path
) -> None:
    result = run_probe(tmp_path, f"redis://127.0.0.1:{shared.port}/0", ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout
    assert "holds 1 keys and the tests would flush them" in result.stdout
    assert Redis(port=shared.port).get("foreign") == b"not the tests' data"


@pytest.mark.slow
def test_a_database_holding_keys_is_a_failure_in_ci(shared: RedisServer, tmp_path: Path) -> None:
    result = run_probe(tmp_path, f"redis://127.0.0.1:{shared.port}/0", ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout
    assert "holds 1 keys and the tests would flush them" in result.stdout
    assert Redis(port=shared.port).get("foreign") == b"not the tests' data"


@pytest.mark.slow
def test_an_empty_database_of_a_busy_server_is_used_and_only_it_is_flushed(
    shared: RedisServer, tmp_path: Path
) -> None:
    result = run_probe(tmp_path, f"redis://127.0.0.1:{shared.port}/15", ci=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert Redis(port=shared.port).get("foreign") == b"not the tests' data"
    # What the tests wrote is gone at the end, so the next run finds the database empty.
    assert Redis(port=shared.port, db=15).dbsize() == 0
