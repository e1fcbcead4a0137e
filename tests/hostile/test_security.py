"""Secrets never reach logs, jobs or Redis; candidate data expires; Redis with a password."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from redis import Redis

from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.vendor import VendorAPI
from support import RedisServer, dispatcher_env
from support.hostile import redis_values

pytestmark = pytest.mark.redis

SECRETS = {
    "KOMBO_API_KEY": "sk_live_SECRETkombo7f3a",
    "PROVISION_TOKEN": "tok_SECRETvendor91b2",
    "SMTP password": "pw_SECRETsmtp55c1",
    "KOMBO_WEBHOOK_SECRET": "whsec_SECREThook0e9d",
    "Redis password": "redis_SECRETpw3318",
}


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    """A private redis-server that demands a password."""
    server = RedisServer()
    server.extra_args = ["--requirepass", SECRETS["Redis password"]]
    server.start()
    yield server
    server.cleanup()


@pytest.mark.slow
def test_no_secret_in_logs_jobs_or_redis_and_candidate_data_expires(
    locked_redis: RedisServer,
) -> None:
    from dispatcher.testing.sim import Simulator

    password = SECRETS["Redis password"]
    url = f"redis://:{password}@127.0.0.1:{locked_redis.port}/0"
    sim = Simulator(2, 6, seed=51, api_key=SECRETS["KOMBO_API_KEY"])
    vendor = VendorAPI(failures=[503])  # one retry, so error paths log too
    mailbox = Mailbox(auth=("mailer", SECRETS["SMTP password"]))
    try:
        with sim.serve() as server:
            env = dispatcher_env(
                url,
                KOMBO_BASE_URL=server.url,
                KOMBO_API_KEY=SECRETS["KOMBO_API_KEY"],
                KOMBO_INTEGRATION_IDS=",".join(sim.integration_ids) + ",lever:NOSUCH",
                KOMBO_WEBHOOK_SECRET=SECRETS["KOMBO_WEBHOOK_SECRET"],
                DISPATCHER_HANDLERS="log,provision_http,notify_email",
                DISPATCHER_RETRY_BACKOFF="0",
                DISPATCHER_RESULT_TTL="120",
                PROVISION_URL=vendor.url,
                PROVISION_TOKEN=SECRETS["PROVISION_TOKEN"],
                SMTP_URL=f"smtp://mailer:{SECRETS['SMTP password']}@127.0.0.1:{mailbox.controller.port}",
                NOTIFY_FROM="t@acme.example",
            )
            logs = []
            for args in (["poll", "--once"], ["worker", "--burst"], ["poll", "--once"]):
                result = subprocess.run(
                    [sys.executable, "-m", "dispatcher", "--log-level", "DEBUG", *args],
                    env=env, capture_output=True, text=True, timeout=40,
                )  # fmt: skip
                logs.append(result.stdout + result.stderr)
            bad = subprocess.run(
                [sys.executable, "-m", "dispatcher", "poll", "--once"],
                env={**env, "REDIS_URL": f"redis://:{password}@127.0.0.1:1/0"},
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            logs.append(bad.stdout + bad.stderr)
    finally:
        vendor.close()
        mailbox.close()
    log_text = "\n".join(logs)
    assert "DEBUG" in log_text and "lever:NOSUCH" in log_text  # errors were logged, verbosely
    assert len(vendor.calls) >= 12 and mailbox.logins  # the chain really ran, with SMTP AUTH
    assert "REDIS_URL: cannot reach Redis at redis://:***@127.0.0.1:1/0" in bad.stderr

    redis = Redis.from_url(url)
    stored = list(redis_values(redis))
    for name, secret in SECRETS.items():
        assert secret not in log_text, f"{name} appears in the logs"
        leaked = [v[:80] for v in stored if secret.encode() in v]
        assert not leaked, f"{name} appears in Redis: {leaked}"

    # Candidate personal data (order payloads in jobs and results, step outputs) expires.
    expiring = [
        key
        for key in redis.scan_iter()
        if key.startswith((b"rq:job:", b"rq:results:", b"dispatcher:steps:"))
    ]
    assert expiring
    for key in expiring:
        assert 0 < redis.ttl(key) <= 120, key
    # The seen store holds ids and times, nothing else.
    for key in redis.scan_iter("dispatcher:seen:*"):
        assert all(value.replace(b":", b"").isdigit() for value in redis.hvals(key))
