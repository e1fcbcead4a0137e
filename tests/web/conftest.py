"""Fixtures of the web tests (tests/web)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from dispatcher.web.app import create_app
from support.console import World, seed
from support.web import serving


@pytest.fixture
def world(redis: Redis, redis_url: str, namespace: str) -> Iterator[World]:
    """A seeded dispatcher (:func:`support.console.seed`) served by uvicorn on a real socket."""
    settings, sim = seed(redis, redis_url, namespace)
    with serving(create_app(settings, redis)) as url:
        yield World(redis, settings, sim, url, redis_url)
