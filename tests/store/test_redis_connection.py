"""dispatcher.store.connection: URL forms and their errors, and the checks of the server
(eviction, persistence, Cluster, sentinel port, version) at start, in status and /healthz."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.sentinel import SentinelConnectionPool

from dispatcher.ops.status import take_snapshot
from dispatcher.ops.views import render_status
from dispatcher.settings import ConfigError, load_settings
from dispatcher.store.connection import (
    UnsuitableRedisError,
    check_server,
    connect,
    open_redis,
    startup_check,
)
from support import free_port


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("rediss://h:6380/0?ssl_ca_cert=/ca.pem", "unknown query parameter 'ssl_ca_cert'"),
        ("redis://h:6379/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be none, optional or required"),
        ("rediss://h/0?ssl_cert_reqs=none&ssl_cert_reqs=required", "given twice"),
        ("redis+sentinel://h1:26379,h2:xx/mymaster/0", "sentinel address 'h2:xx'"),
        ("redis+sentinel://h1:26379/", "ends in /<service name>"),
        ("redis+sentinel://h1:26379/mymaster/zero", "ends in /<service name>"),
        ("redis+sentinel://h1/m/0?sentinel_timeout=soon", "sentinel_timeout must be seconds"),
        ("http://h:6379", "must start with redis://"),
    ],
)
def test_a_bad_url_is_one_line_naming_redis_url(url: str, says: str) -> None:
    with pytest.raises(UnsuitableRedisError) as raised:
        connect(url.replace("//h", "//u:sekr1tpass@h", 1))
    message = str(raised.value)
    assert message.startswith("REDIS_URL: ") and says in message and "\n" not in message
    assert "sekr1tpass" not in message


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials() -> None:
    redis = connect("rediss+sentinel://app:pw%2F1@10.0.0.1:26379,[::1]:26380/cache/3")
    pool = redis.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "cache"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", "pw/1")
    assert type(pool).__name__ == "SentinelConnectionPool"
    assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    hosts = [s.connection_pool.connection_kwargs["host"] for s in pool.sentinel_manager.sentinels]
    assert hosts == ["10.0.0.1", "::1"]


def test_the_settings_accept_the_sentinel_forms() -> None:
    url = "redis+sentinel://h1:26379,h2:26379/mymaster/0"
    assert load_settings(REDIS_URL=url).redis_url.get_secret_value() == url
    with pytest.raises(ConfigError, match="REDIS_URL: must start with"):
        load_settings(REDIS_URL="sentinel://h1/m")


def test_no_verification_warns_once_per_client(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dispatcher.redis"):
        connect("rediss://h:6380/0?ssl_cert_reqs=none")
        connect("rediss://h:6380/0?ssl_cert_reqs=required")
    assert [r.getMessage()[:33] for r in caplog.records] == ["REDIS_URL: ssl_cert_reqs=none: th"]


def test_an_unreachable_redis_is_one_line_without_the_password() -> None:
    with pytest.raises(UnsuitableRedisError) as raised:
        open_redis(f"redis://:sekr1tpass@127.0.0.1:{free_port()}/0")
    message = str(raised.value)
    assert "cannot reach Redis at redis://:***@127.0.0.1" in message
    assert "sekr1tpass" not in message and "\n" not in message


class _Info(Redis):
    """A Redis whose INFO answers what the test says (servers we cannot start here)."""

    def __init__(self, **info: Any) -> None:
        super().__init__()
        self._info = {"redis_version": "7.2.4", "redis_mode": "standalone", **info}

    def info(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self._info

    def config_get(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {"save": "3600 1"}


@pytest.mark.parametrize(
    ("info", "refusal"),
    [
        ({"redis_version": "4.0.14"}, "Redis 4.0.14 is too old: the dispatcher needs 5.0.0"),
        ({"redis_mode": "cluster", "cluster_enabled": 1}, "Redis Cluster"),
        ({"redis_mode": "sentinel"}, "names a Sentinel, not a data node"),
    ],
)
def test_servers_the_dispatcher_cannot_run_on_are_refused(
    info: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(UnsuitableRedisError, match=refusal):
        startup_check(_Info(**info), process="poller")
    assert refusal in (check_server(_Info(**info)).refusal or "")


def test_a_recent_standalone_server_is_fine() -> None:
    check = check_server(_Info(redis_version="6.2.14", maxmemory_policy="noeviction"))
    assert (check.refusal, check.problems, check.notices) == (None, (), ())


@pytest.fixture
def policy(redis: Redis) -> Iterator[Redis]:
    before = redis.config_get("maxmemory-policy")["maxmemory-policy"]
    yield redis
    redis.config_set("maxmemory-policy", before)


@pytest.mark.redis
def test_an_evicting_policy_is_a_problem_everywhere(policy: Redis, redis_url: str) -> None:
    # Given a Redis that may evict keys under memory pressure
    policy.config_set("maxmemory-policy", "allkeys-lru")
    settings = load_settings(REDIS_URL=redis_url)
    # Then the start of a process, status (text and JSON) say so, naming the policy
    check = check_server(policy)
    assert len(check.problems) == 1 and "maxmemory-policy is allkeys-lru" in check.problems[0]
    snapshot = take_snapshot(policy, settings)
    assert any("allkeys-lru" in p and "evicts" in p for p in snapshot.as_dict()["problems"])
    assert "maxmemory-policy is allkeys-lru" in render_status(snapshot)
    # And persistence off (the test server's) is a notice, not a problem
    assert any("persistence is off" in n for n in snapshot.as_dict()["notices"])
    assert "notice: Redis persistence is off" in render_status(snapshot)
    policy.config_set("maxmemory-policy", "noeviction")
    assert not any("maxmemory" in p for p in take_snapshot(policy, settings).problems)


CLUSTER_PORT_LIMIT = 65536 - 10000


def test_free_port_below_a_limit_fits_a_cluster_bus() -> None:
    # The OS's ephemeral range (32768-60999 on Linux) reaches past 55535 about a fifth of
    # the time: the cluster test failed then. Asked for 200 ports, every one fits.
    ports = [free_port(below=CLUSTER_PORT_LIMIT) for _ in range(200)]
    assert all(1024 < port < CLUSTER_PORT_LIMIT for port in ports), max(ports)


@pytest.mark.redis
def test_a_real_cluster_node_is_refused_with_one_line(tmp_path: Any) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server")
    # A cluster node listens on port + 10000 too (its bus): a port above 55535 cannot start.
    port = free_port(below=CLUSTER_PORT_LIMIT)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
            "--cluster-config-file", str(tmp_path / "nodes.conf"), "--dir", str(tmp_path),
            "--save", "", "--appendonly", "no"]  # fmt: skip
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = Redis(port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, "no cluster node"
                time.sleep(0.02)
        with pytest.raises(UnsuitableRedisError, match="Redis Cluster: RQ's keys span hash"):
            open_redis(f"redis://127.0.0.1:{port}/0")
    finally:
        server.kill()
        server.wait()
