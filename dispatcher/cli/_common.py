"""What every command module shares: the one-line error, settings, Redis, the Kombo client."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError
from dispatcher.settings import ConfigError, Settings, load_settings
from dispatcher.store.connection import Role, UnsuitableRedisError, open_redis
from dispatcher.store.failures import MAX_REASON_LENGTH
from dispatcher.store.job_options import JobOptions
from dispatcher.store.ledger import Ledger
from dispatcher.store.rq_internals import JOB_SERIALIZER
from dispatcher.untrusted import untrusted_text

__all__ = [
    "colour",
    "confirm",
    "connect_redis",
    "fail",
    "kombo_client",
    "kombo_failure",
    "make_ledger",
    "or_fail",
    "redis_failed",
    "settings_of",
]


def fail(message: str, code: int = 2) -> NoReturn:
    """The house style for every error: ``dispatcher: error: ...``, one line, then exit."""
    click.echo(f"dispatcher: error: {message}", err=True)
    sys.exit(code)


def settings_of(ctx: click.Context) -> Settings:
    """The settings, loaded once per invocation; a configuration error is one line, exit 2."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings()
        except ConfigError as exc:
            fail(str(exc))
    settings: Settings = obj["settings"]
    return settings


def connect_redis(settings: Settings, *, ping: bool = True, role: Role = "cli") -> Redis:
    """A Redis client for ``REDIS_URL``, checked with a PING; unreachable: one line, exit 1."""
    # TLS, Sentinel, the start-up guards (Cluster, eviction, version): dispatcher.store.connection.
    try:
        redis = open_redis(settings.redis_url.get_secret_value(), role=role, ping=ping)
    except UnsuitableRedisError as exc:
        fail(str(exc), code=1)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.ensure_object(dict)["redis"] = redis  # for the group to diagnose a refusal
    return redis


def make_ledger(settings: Settings, redis: Redis) -> Ledger:
    return Ledger(
        redis,
        Queue(settings.queue, connection=redis, serializer=JOB_SERIALIZER),
        settings.namespace,
        job_options=JobOptions.from_settings(settings),
    )


def or_fail(get: Callable[[], Any]) -> Any:
    """``get()``, a :class:`ConfigError` being one line, exit 2."""
    try:
        return get()
    except ConfigError as exc:
        fail(str(exc))


def redis_failed(exc: RedisError) -> NoReturn:
    fail(f"cannot read Redis: {type(exc).__name__}: {exc}", code=1)


def colour() -> bool | None:
    # None lets click decide (styles only on a terminal); NO_COLOR (no-color.org) turns them off.
    return False if os.environ.get("NO_COLOR") else None


def confirm(question: str) -> bool:
    """Ask on stderr; no answer (end of input, Ctrl-C) is no."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input, or Ctrl-C, at the prompt
        click.echo(err=True)
        return False


def kombo_client(settings: Settings) -> KomboClient:
    """A Kombo client for the write-back commands (``KOMBO_API_KEY`` required)."""
    client: KomboClient = or_fail(lambda: KomboClient.from_settings(settings))
    return client


def kombo_failure(exc: KomboError) -> str:
    """Kombo's error as one line for the terminal: its message may echo the API key or hold
    line breaks (the one rule: :func:`dispatcher.untrusted.untrusted_text`)."""
    text = f"{exc} (log: {exc.log_url})" if exc.log_url else str(exc)
    return untrusted_text(text, MAX_REASON_LENGTH)
