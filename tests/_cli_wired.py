"""``dispatcher`` with its Redis connections made by dispatcher.store.connection: the CLI
wiring of issue 16, applied from outside until the CLI (being split into a package) takes it.

Run as ``python tests/_cli_wired.py <command> …``. Once the CLI is wired, the tests call
``python -m dispatcher`` instead and this file goes.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from redis import Redis

import dispatcher.cli as cli
from dispatcher.settings import Settings
from dispatcher.store.connection import UnsuitableRedisError, connect, open_redis, startup_check


def _redis(settings: Settings, *, ping: bool = True) -> Redis:
    # The proposed body of the CLI's _redis helper.
    try:
        redis = open_redis(settings.redis_url.get_secret_value(), role="cli", ping=ping)
    except UnsuitableRedisError as exc:
        cli._fail(str(exc), code=1)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.ensure_object(dict)["redis"] = redis
    return redis


class _WebRedis(Redis):
    """`dispatcher web` builds its client with Redis.from_url: the proposed edit calls
    connect(url, role="web", retry=…) there, then startup_check when Redis answers."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Redis:  # type: ignore[override]
        try:
            redis = connect(url, role="web", **kwargs)
        except UnsuitableRedisError as exc:
            raise ValueError(str(exc)) from None
        try:
            startup_check(redis, process="web")
        except UnsuitableRedisError as exc:
            raise ValueError(str(exc)) from None
        except Exception:  # Redis down: /healthz says so
            pass
        return redis


cli._redis = _redis
cli.Redis = _WebRedis  # type: ignore[misc]

if __name__ == "__main__":
    sys.argv[0] = "dispatcher"
    cli.main()
