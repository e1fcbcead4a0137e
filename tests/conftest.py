"""The fixtures of several test folders (each folder's own are in its conftest.py; the
helpers the tests call are in tests/support)."""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import pytest
from hypothesis import settings as hypothesis_settings
from redis import Redis

from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator, SimulatorServer
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.classes import DispatcherWorker
from dispatcher.worker.jobs import install_runtime
from support import RedisServer

# The property tests run beside other processes on loaded machines: hypothesis' per-example
# deadline (200 ms) measured the machine, not the code (two failures at load average 12).
hypothesis_settings.register_profile("dispatcher", deadline=None)
hypothesis_settings.load_profile("dispatcher")


def _require_real_redis() -> bool:
    # CI must not pass by skipping every real-Redis test.
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _refuse(reason: str) -> NoReturn:
    if _require_real_redis():
        pytest.fail(reason)
    pytest.skip(reason)


def claim_test_redis(url: str) -> None:
    """Refuse a ``TEST_REDIS_URL`` whose database already holds keys.

    The tests flush their database before each test; a shared server's data must not go
    with it. Only the URL's database is ever flushed (FLUSHDB, never FLUSHALL), so an empty
    database number of a busy server (``redis://host:6379/15``) is fine.
    """
    client = Redis.from_url(url)
    kwargs = client.connection_pool.connection_kwargs
    where = f"{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"  # no password
    try:
        held = client.dbsize()
    finally:
        client.close()
    if held:
        _refuse(
            f"TEST_REDIS_URL (database {where}) holds {held} keys and the tests would flush them:"
            " point it at an empty database (e.g. .../15), or FLUSHDB it if an earlier test run"
            " left them"
        )


def _per_worker(url: str) -> str:
    """With pytest-xdist, each worker its own database of TEST_REDIS_URL: the one given for
    the first worker, the next ones for the others (a private server needs none of this)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0)
    if index == 0:
        return url
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{base + index}"))


@pytest.fixture(autouse=True)
def _ctrl_c_as_from_a_terminal() -> None:
    """Processes a test starts get Ctrl-C's default, as from a terminal. An ignored SIGINT is
    inherited across exec: a run started in the background (`cmd &` in a script) ignores it,
    and so may a test worker after code that sets it (RQ's work-horse setup ignores it), and
    `status --watch` then never saw the Ctrl-C its test sends (loaded CI runs, 1 in 2)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: a private redis-server when installed, else TEST_REDIS_URL (its
    database empty at start), else skip."""
    try:
        server = RedisServer()
    except RuntimeError:
        url = os.environ.get("TEST_REDIS_URL")
        if not url:
            _refuse("no redis-server binary and no TEST_REDIS_URL: real-Redis tests need one")
        url = _per_worker(url)
        claim_test_redis(url)
        yield url
        # Empty at start, so what it holds now is ours: leave it empty for the next run.
        client = Redis.from_url(url)
        client.flushdb()
        client.close()
        return
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A connection to the real test Redis, its database flushed (only that database)."""
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture(params=["fakeredis", "redis"])
def any_redis(request: pytest.FixtureRequest) -> Redis:
    """The same test on fakeredis and on a real server."""
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return request.getfixturevalue("redis")  # type: ignore[no-any-return]


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True, scope="session")
def _plain_rq_workers_stop_promptly() -> Iterator[None]:
    """Tests that play a plain RQ worker (``SimpleWorker``) get the dispatcher's prompt
    teardown: RQ's command thread reads for 60 s at a time and, with redis-py 8.2, a
    worker's teardown waits for that read, a minute per such test (see
    DispatcherWorker.subscribe)."""
    from rq.worker.base import BaseWorker

    original = BaseWorker.subscribe
    BaseWorker.subscribe = DispatcherWorker.subscribe  # type: ignore[method-assign]
    yield
    BaseWorker.subscribe = original  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _reset_runtime() -> Iterator[None]:
    yield
    install_runtime(None)


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """The CLI reconfigures the root logger; give the next test the one it had."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def vendor() -> Iterator[VendorAPI]:
    """A stand-in of the vendor's provisioning API on a real socket."""
    api = VendorAPI()
    yield api
    api.close()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) keeping what it receives."""
    box = Mailbox()
    yield box
    box.close()


@pytest.fixture
def kombo(sim: Simulator) -> Iterator[SimulatorServer]:
    """The module's simulator (its ``sim`` fixture) served over a real socket."""
    with sim.serve() as server:
        yield server


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_url: str,
    redis: Redis,
    kombo: SimulatorServer,
    sim: Simulator,
) -> dict[str, str]:
    """The dispatcher's settings for the CLI in process (``support.ops.run``): the test Redis
    and ``kombo``, set in this process's environment and returned; no other settings leak in
    (none of the caller's, no stray .env)."""
    for name in list(os.environ):
        if name.startswith(("KOMBO_", "DISPATCHER_", "REDIS_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env
    values = {
        "REDIS_URL": redis_url,
        "KOMBO_BASE_URL": kombo.url,
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_INTEGRATION_IDS": ",".join(sim.integration_ids),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values
