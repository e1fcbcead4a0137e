"""The one place a Redis client is made from ``REDIS_URL``, and the checks of the server it
reaches.

URL forms (see the README, "Redis in production"):

- ``redis://[user:pass@]host:port/db``, ``unix:///path?db=N``: redis-py's own forms;
- ``rediss://…?ssl_ca_certs=/ca.pem&ssl_certfile=…&ssl_keyfile=…&ssl_cert_reqs=required``:
  TLS with redis-py's ``ssl_*`` query parameters (``ssl_cert_reqs=none`` turns verification
  off, for providers with self-signed certificates, and logs one warning);
- ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>/<db>`` and
  ``rediss+sentinel://…`` (TLS to the data nodes): the primary of ``<service>`` as the
  sentinels name it, found again after a failover (redis-py's ``Sentinel.master_for``).

Every query parameter is checked against the list below: a typo is one line naming it, not a
``TypeError`` at the first command.

:func:`check_server` reads what the server is (version, mode, eviction, persistence) and
answers the problems and notices every process shows at start, ``dispatcher status`` lists
and ``/healthz`` details; a server the dispatcher cannot run on (Redis Cluster, a sentinel
itself, too old a version) is a refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from redis import Redis
from redis.connection import parse_url
from redis.exceptions import RedisError, ResponseError
from redis.sentinel import Sentinel

from dispatcher._text import REDIS_URL_SCHEMES, url_problem

__all__ = [
    "MIN_REDIS_VERSION",
    "SCHEMES",
    "Role",
    "ServerCheck",
    "UnsuitableRedisError",
    "check_server",
    "connect",
    "open_redis",
    "reachable",
    "redacted_url",
    "startup_check",
]

log = logging.getLogger("dispatcher.redis")

SCHEMES = REDIS_URL_SCHEMES

# RQ's results are streams (XADD, 5.0); the dispatcher's scripts need HSET with many fields
# (4.0). Older servers fail deep inside a job, so they are refused at start.
MIN_REDIS_VERSION = (5, 0, 0)

Role = Literal["cli", "poller", "worker", "web", "bench"]

# Seconds to open a connection: a Redis that is failing over gets a moment, and a process
# that cannot reach Redis at all says so within seconds.
_CONNECT_TIMEOUT = 5
# The web app answers probes: it must say "Redis is down" fast (one quick retry), and a
# request never hangs on a Redis that accepted the connection but does not answer.
_WEB_CONNECT_TIMEOUT = 2
_WEB_COMMAND_TIMEOUT = 5
# Timeouts per kind of process.
_ROLE_KWARGS: Mapping[str, Mapping[str, Any]] = {
    "cli": {"socket_connect_timeout": _CONNECT_TIMEOUT},
    "poller": {"socket_connect_timeout": _CONNECT_TIMEOUT},
    "worker": {"socket_connect_timeout": _CONNECT_TIMEOUT},
    "web": {"socket_connect_timeout": _WEB_CONNECT_TIMEOUT, "socket_timeout": _WEB_COMMAND_TIMEOUT},
    "bench": {"socket_connect_timeout": _CONNECT_TIMEOUT},
}
# redis-py PINGs a connection idle this long before it uses it again: one a firewall or a
# failover dropped is found then, not by the command sent on it.
_HEALTH_CHECK_INTERVAL = 30
# How long a sentinel may take to answer (the ``sentinel_timeout`` query parameter): it
# answers from memory, so a slower one is skipped for the next.
_SENTINEL_TIMEOUT = "5"

# The query parameters redis-py understands (its URL parser passes unknown ones through as
# connection arguments, which fail only at the first command), plus the sentinel ones.
_QUERY_PARAMETERS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "retry_on_timeout",
        "max_connections",
        "health_check_interval",
        "client_name",
        "protocol",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
_SENTINEL_PARAMETERS = frozenset({"sentinel_username", "sentinel_password", "sentinel_timeout"})
_CERT_REQS = frozenset({"none", "optional", "required"})


class UnsuitableRedisError(Exception):
    """``REDIS_URL`` is malformed, or names a server the dispatcher must not run on.

    The message is one line, names ``REDIS_URL`` and never holds the password."""


def redacted_url(url: str) -> str:
    """A connection URL with its password replaced, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    hosts = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def connect(url: str, *, role: Role = "cli", **overrides: Any) -> Redis:
    """A redis-py client for ``url`` (any form of the module docstring), with the timeouts of
    ``role``; ``overrides`` win over both. Nothing is sent to Redis yet.

    Raises :class:`UnsuitableRedisError` for a malformed URL or an unknown query parameter.
    """
    problem = url_problem(url)
    if problem is not None:
        raise UnsuitableRedisError(f"REDIS_URL: {problem}")
    kwargs: dict[str, Any] = {"health_check_interval": _HEALTH_CHECK_INTERVAL, **_ROLE_KWARGS[role]}
    kwargs.update(overrides)
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_client(url, scheme == "rediss+sentinel", kwargs)
    if scheme not in ("redis", "rediss", "unix"):
        raise UnsuitableRedisError(f"REDIS_URL: must start with {', '.join(SCHEMES)}")
    query = _query(url)
    _check_tls(query, tls=scheme == "rediss")
    try:
        return Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise UnsuitableRedisError(f"REDIS_URL: {exc}") from None


def _query(url: str) -> dict[str, str]:
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs):
        # redis-py reads the first of a repeated parameter: say so rather than guess.
        twice = sorted({k for k, _ in pairs if sum(1 for n, _ in pairs if n == k) > 1})
        raise UnsuitableRedisError(f"REDIS_URL: query parameter {twice[0]!r} given twice")
    unknown = sorted(set(query) - _QUERY_PARAMETERS - _SENTINEL_PARAMETERS)
    if unknown:
        raise UnsuitableRedisError(
            f"REDIS_URL: unknown query parameter {unknown[0]!r} (known: ssl_ca_certs, "
            "ssl_certfile, ssl_keyfile, ssl_cert_reqs, socket_timeout, … see the README)"
        )
    return query


def _check_tls(query: Mapping[str, str], *, tls: bool) -> None:
    ssl = sorted(name for name in query if name.startswith("ssl_"))
    if ssl and not tls:
        raise UnsuitableRedisError(
            f"REDIS_URL: {ssl[0]} needs TLS: use rediss:// (or rediss+sentinel://)"
        )
    reqs = query.get("ssl_cert_reqs")
    if reqs is not None and reqs.lower() not in _CERT_REQS:
        raise UnsuitableRedisError(
            f"REDIS_URL: ssl_cert_reqs must be none, optional or required, not {reqs[:40]!r}"
        )
    if tls and reqs is not None and reqs.lower() == "none":
        log.warning(
            "REDIS_URL: ssl_cert_reqs=none: the Redis server's certificate is not verified "
            "(anyone on the path can pose as Redis); prefer ssl_ca_certs with your provider's CA"
        )


def _sentinel_client(url: str, tls: bool, kwargs: dict[str, Any]) -> Redis:
    """``[rediss|redis]+sentinel://[user:pass@]h1:p1,h2:p2/<service>[/<db>][?query]``."""
    parts = urlsplit(url)
    hosts_part = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in hosts_part.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "26379"
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UnsuitableRedisError(
                f"REDIS_URL: sentinel address {item[:60]!r} is not host:port"
            )
        sentinels.append((host, int(port)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise UnsuitableRedisError(
            "REDIS_URL: a sentinel URL ends in /<service name>[/<db number>], "
            "e.g. redis+sentinel://h1:26379,h2:26379/mymaster/0"
        )
    service = path[0]
    query = _query(url)
    _check_tls(query, tls=tls)
    # redis-py's URL parser turns the rest (credentials, db, ssl_*) into connection arguments.
    userinfo = parts.netloc.rpartition("@")[0]
    plain = urlunsplit(
        (
            "rediss" if tls else "redis",
            f"{userinfo}@sentinel" if userinfo else "sentinel",
            f"/{path[1] if len(path) == 2 else 0}",
            "&".join(f"{k}={v}" for k, v in query.items() if k not in _SENTINEL_PARAMETERS),
            "",
        )
    )
    try:
        node: dict[str, Any] = parse_url(plain)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise UnsuitableRedisError(f"REDIS_URL: {exc}") from None
    node.pop("host", None)
    node.pop("port", None)
    if node.pop("connection_class", None) is not None:
        node["ssl"] = True  # SentinelConnectionPool's switch to its TLS connection class
    # The sentinels answer plain, with their own credentials (query parameters) if any.
    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": kwargs.get("socket_connect_timeout", _CONNECT_TIMEOUT),
        "socket_timeout": _seconds(
            query.get("sentinel_timeout", _SENTINEL_TIMEOUT), "sentinel_timeout"
        ),
    }
    if "sentinel_username" in query:
        sentinel_kwargs["username"] = query["sentinel_username"]
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"]
    # Through Any: redis-py < 8.2 leaves Sentinel untyped, 8.2 types it; either passes mypy.
    sentinel_class: Any = Sentinel
    sentinel = sentinel_class(sentinels, sentinel_kwargs=sentinel_kwargs, **{**kwargs, **node})
    client: Redis = sentinel.master_for(service, redis_class=Redis)
    return client


def _seconds(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise UnsuitableRedisError(f"REDIS_URL: {name} must be seconds (0 to 3600)")
    return value


# -- what the server is ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """What :func:`check_server` found: ``refusal`` (run nothing), ``problems`` (data can be
    lost: status and /healthz show them) and ``notices`` (worth knowing)."""

    version: str = ""
    refusal: str | None = None
    problems: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()
    facts: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "refusal": self.refusal,
            "problems": list(self.problems),
            "notices": list(self.notices),
        }


def check_server(redis: Redis) -> ServerCheck:
    """Read INFO (and ``CONFIG GET save`` where allowed) and judge the server.

    Raises RedisError when Redis does not answer at all: the caller reports an outage.
    """
    info: dict[str, Any] = redis.info()
    version = str(info.get("redis_version", "0"))
    facts = {
        "version": version,
        "mode": str(info.get("redis_mode", "standalone")),
        "maxmemory_policy": str(info.get("maxmemory_policy", "")),
        "aof_enabled": str(info.get("aof_enabled", "")),
    }
    refusal = None
    if facts["mode"] == "cluster" or str(info.get("cluster_enabled", "0")) == "1":
        refusal = (
            "REDIS_URL names a Redis Cluster: RQ's keys span hash slots and the dispatcher's "
            "scripts need all their keys in one, so it cannot run there (use a standalone or "
            "Sentinel-managed Redis)"
        )
    elif facts["mode"] == "sentinel":
        refusal = (
            "REDIS_URL names a Sentinel, not a data node: use "
            "redis+sentinel://host:26379/<service>/<db>"
        )
    elif _version(version) < MIN_REDIS_VERSION:
        refusal = (
            f"Redis {version} is too old: the dispatcher needs "
            f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer (RQ's result streams)"
        )
    problems: list[str] = []
    notices: list[str] = []
    policy = facts["maxmemory_policy"]
    if policy and policy != "noeviction":
        problems.append(
            f"Redis maxmemory-policy is {policy}: under memory pressure Redis evicts keys, "
            "and queued jobs, step records or seen marks vanish without an error; "
            "set maxmemory-policy noeviction"
        )
    if info.get("aof_enabled") in (0, "0") and not _rdb_enabled(redis):
        notices.append(
            "Redis persistence is off (neither AOF nor RDB snapshots): a Redis restart "
            "forgets every queued job and step record; the next full sweep dispatches OPEN "
            "orders again (consider appendonly yes, appendfsync everysec)"
        )
    if info.get("role") == "slave":
        problems.append("REDIS_URL names a replica (read-only): writes will fail")
    return ServerCheck(
        version=version,
        refusal=refusal,
        problems=tuple(problems),
        notices=tuple(notices),
        facts=facts,
    )


def _rdb_enabled(redis: Redis) -> bool:
    """Whether RDB snapshots are configured; True when the server hides its configuration
    (managed providers rename or forbid CONFIG): say nothing rather than guess."""
    try:
        save = redis.config_get("save")
    except ResponseError:
        return True
    return bool(str(save.get("save", "") or "").strip())


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def startup_check(redis: Redis, *, process: str) -> ServerCheck:
    """At a process's start: raise :class:`UnsuitableRedisError` on a refusal, log each
    problem (WARNING) and notice (INFO) once. RedisError (unreachable) propagates.

    One-shot commands (``cli``) log notices at DEBUG: ``status`` shows them, and repeating
    them before every command's output is noise."""
    try:
        check = check_server(redis)
    except ResponseError as exc:  # INFO forbidden (ACL): nothing to judge by
        log.info("%s: cannot read Redis INFO (%s): server checks skipped", process, exc)
        return ServerCheck()
    if check.refusal is not None:
        raise UnsuitableRedisError(check.refusal)
    for problem in check.problems:
        log.warning("%s", problem)
    for notice in check.notices:
        log.log(logging.DEBUG if process == "cli" else logging.INFO, "%s", notice)
    return check


def reachable(redis: Redis) -> str | None:
    """None when Redis answers PING, else one line saying why not."""
    try:
        redis.ping()
    except (RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def open_redis(url: str, *, role: Role = "cli", ping: bool = True, **overrides: Any) -> Redis:
    """What a process does first: :func:`connect`, PING, :func:`startup_check`.

    Every failure is one :class:`UnsuitableRedisError` line naming ``REDIS_URL`` (without
    its password): a malformed URL, an unreachable server or a failed TLS handshake (a wrong
    CA), a Cluster, a sentinel port, too old a version. With ``ping=False`` nothing is sent
    (``dispatcher web`` starts while Redis is down: /healthz then says so).
    """
    redis = connect(url, role=role, **overrides)
    if not ping:
        return redis
    try:
        redis.ping()
        startup_check(redis, process=role)
    except (RedisError, OSError) as exc:
        raise UnsuitableRedisError(
            f"REDIS_URL: cannot reach Redis at {redacted_url(url)}: {_one_line(exc)}"
        ) from None
    return redis


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__
