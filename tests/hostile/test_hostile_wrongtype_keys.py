"""Hostile Redis content, issue 22 item 7 (W7): keys of the wrong type beyond the ledger's.

A string at ``{ns}:outbox-pending`` made every results PUT answer 503 while ``/healthz`` said
ok and ``dispatcher status`` showed nothing. Each key the outbox, the results queue, the
console's chart and the leases use is planted with the wrong type in a real redis-server; a
real ``dispatcher web`` and ``dispatcher status`` must name it, as they name the ledger's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from dispatcher.store.keys import Keys
from support import dispatcher_env, dispatcher_web, slow_beyond
from support.web import samples

pytestmark = pytest.mark.redis

NAMESPACE = "w7keys"
INTEGRATION = "greenhouse:WrongTypeKeys"
KEYS = Keys(NAMESPACE)


def _hour() -> int:
    return int(time.time()) // 3600


# name -> (key, the type it belongs as, shared: /healthz names it (a per-integration key or
# an old chart hour is status's and /metrics' only, like the ledger's seen hash)).
# An hour's key is named when the test plants it: taken at import, "this hour" was the last
# hour for a run that crossed the hour (and /healthz rightly said ok).
PLANTED: dict[str, tuple[str | Callable[[], str], str, bool]] = {
    # The first two (one shared key, one status-only) run by default, the rest in the slow step.
    "outbox-pending": (KEYS.outbox_index("pending"), "zset", True),
    "throughput (ten hours ago)": (lambda: KEYS.throughput(_hour() - 10), "hash", False),
    "outbox-written": (KEYS.outbox_index("written"), "zset", True),
    "outbox-failed": (KEYS.outbox_index("failed"), "zset", True),
    "provisioned": (KEYS.provisioned, "zset", True),
    "result-stats": (KEYS.result_stats, "hash", True),
    "results queue": (f"rq:queue:{NAMESPACE}-results", "list", True),
    "throughput (this hour)": (lambda: KEYS.throughput(_hour()), "hash", True),
    "lease": (KEYS.lease(INTEGRATION), "string", False),
    # A wrong-type confirmation hash made every webhook delivery 503 while /healthz said ok.
    "webhook-unconfirmed": (KEYS.webhook_unconfirmed, "hash", True),
    "webhook-unconfirmed-since": (KEYS.webhook_unconfirmed_since, "zset", True),
    "console-login-all": (KEYS.console_login_all, "string", True),
}


def _env(redis_url: str) -> dict[str, str]:
    return dispatcher_env(
        redis_url,
        KOMBO_API_KEY="sim-api-key",
        KOMBO_INTEGRATION_IDS=INTEGRATION,
        KOMBO_WEBHOOK_SECRET="whsec_wrongtype_keys_123",
        DISPATCHER_NAMESPACE=NAMESPACE,
        DISPATCHER_HANDLERS="log",
        DISPATCHER_API_TOKEN="api-token-wrongtype-keys-0123456789",
    )


@pytest.fixture(scope="module")
def web(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`dispatcher web` as deployed, for the whole module."""
    log = tmp_path_factory.mktemp("w7") / "web.log"
    with dispatcher_web(_env(redis_url), log) as url:
        yield url
    assert "Traceback" not in Path(log).read_text()


def _status(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", "status", *args],
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("where", slow_beyond(PLANTED, keep=2))
def test_a_key_of_the_wrong_type_is_named_by_status_healthz_and_metrics(
    redis: Redis, redis_url: str, web: str, where: str
) -> None:
    named, belongs, shared = PLANTED[where]
    key = named() if callable(named) else named
    # Given a working dispatcher (an integration swept once)...
    redis.hset(KEYS.sweep(INTEGRATION), mapping={"last_sweep_at": time.time()})
    redis.sadd(KEYS.swept_integrations, INTEGRATION)
    assert httpx.get(f"{web}/healthz", timeout=10).text.startswith("ok")
    # ...when someone who can write Redis plants the key with another type
    if belongs == "string":
        redis.rpush(key, "planted")
        found = "list"
    else:
        redis.set(key, "planted")
        found = "string"
    problem = f"key {key} holds a {found} where a {belongs} belongs"
    # Then `dispatcher status` names it (text and JSON)...
    text, as_json = _status(redis_url), _status(redis_url, "--json")
    assert "Traceback" not in text.stderr + as_json.stderr
    assert problem in text.stdout, text.stdout
    snapshot = json.loads(as_json.stdout)
    assert snapshot["ok"] is False
    assert key in [broken["key"] for broken in snapshot["broken_keys"]]
    assert any(problem in line for line in snapshot["problems"]), snapshot["problems"]
    # ...so does /metrics...
    metrics = samples(httpx.get(f"{web}/metrics", timeout=30).text)
    assert metrics[("dispatcher_redis_broken_keys", ())] == 1
    assert metrics[("dispatcher_redis_up", ())] == 1
    # ...and /healthz, for a key every process shares.
    health = httpx.get(f"{web}/healthz", timeout=10)
    if shared:
        assert health.status_code == 503, health.text
        assert health.text == f"redis: {problem}: repair or delete it\n"
    else:
        assert health.status_code == 200 and health.text.startswith("ok"), health.text
