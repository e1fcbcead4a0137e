from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
from redis import Redis

from _support import RedisServer
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.jobs import install_runtime


def _require_real_redis() -> bool:
    # CI must not pass by skipping every real-Redis test.
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: a private redis-server when installed, else TEST_REDIS_URL, else skip."""
    try:
        server = RedisServer()
    except RuntimeError:
        url = os.environ.get("TEST_REDIS_URL")
        if url:
            yield url
            return
        reason = "no redis-server binary and no TEST_REDIS_URL: real-Redis tests need one"
        if _require_real_redis():
            pytest.fail(reason)
        pytest.skip(reason)
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    """A flushed connection to the real test Redis."""
    client = Redis.from_url(redis_url)
    client.flushall()
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


@pytest.fixture(autouse=True)
def _reset_runtime() -> Iterator[None]:
    yield
    install_runtime(None)


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
