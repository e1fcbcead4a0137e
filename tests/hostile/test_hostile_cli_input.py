"""Hostile input, issue 22 item 8: a malformed ``REDIS_URL`` (W13) and a Kombo listing that
names an order twice (W14), through ``dispatcher`` processes, a Kombo stand-in on a real
socket and a real redis-server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis import Redis

from dispatcher.store.keys import Keys
from support import dispatcher_env, free_port, order_payload, slow_beyond
from support.hostile import (
    API_KEY,
    API_TOKEN,
    PROVISION_TOKEN,
    SMTP_PASSWORD,
    WEBHOOK_SECRET,
    echoing_kombo,
    exposed,
    json_server,
)
from support.ops import dispatcher as run

PASSWORD = "pw_W13neverShown77"
MALFORMED = [
    f"redis://:{PASSWORD}@[::1:7231/0",  # the IPv6 address's "]" missing
    f"redis://:{PASSWORD}@localhost:port/0",  # a port that is no number
    f"redis://:{PASSWORD}@localhost:99999/0",  # a port out of range
    f"redis+sentinel://:{PASSWORD}@[::1:26379,h2:26379/mymaster",
]


# Every command with the first URL by default; the other URLs' shapes in the slow step.
@pytest.mark.parametrize("url", slow_beyond(MALFORMED, keep=1))
@pytest.mark.parametrize(
    "command",
    [["status"], ["poll", "--once"], ["worker", "--burst"], ["web", "--port", "0"], ["failed"]],
)
def test_a_malformed_redis_url_is_one_line_exit_2_without_the_password(
    url: str, command: list[str]
) -> None:
    env = dispatcher_env(
        url,
        KOMBO_API_KEY="sim-api-key",
        KOMBO_INTEGRATION_IDS="greenhouse:W13",
        KOMBO_WEBHOOK_SECRET="whsec_for_the_web_command_1",
        DISPATCHER_HANDLERS="log",
    )
    result = run(command, env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dispatcher: error: REDIS_URL: malformed URL: "), lines
    assert PASSWORD not in result.stderr and PASSWORD[:8] not in result.stderr


INTEGRATION = "greenhouse:W14Twice"


@pytest.fixture
def kombo_listing_twice() -> Iterator[tuple[str, list[str]]]:
    """Kombo answering every listing with one page naming order T1 twice (and T2 once)."""
    page = [order_payload("T1"), order_payload("T2"), order_payload("T1")]
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            body = {"status": "success", "data": {"next": None, "results": page}}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.redis
def test_replay_queues_an_order_listed_twice_on_a_page_once(
    redis: Redis, redis_url: str, namespace: str, kombo_listing_twice: tuple[str, list[str]]
) -> None:
    url, requests = kombo_listing_twice
    # Given two orders the dispatcher dispatched (their jobs long done and gone)
    keys = Keys(namespace)
    redis.hset(keys.seen(INTEGRATION), mapping={"T1": str(time.time()), "T2": str(time.time())})
    env = dispatcher_env(
        redis_url,
        KOMBO_BASE_URL=url,
        KOMBO_API_KEY="sim-api-key",
        KOMBO_INTEGRATION_IDS=INTEGRATION,
        DISPATCHER_NAMESPACE=namespace,
        DISPATCHER_HANDLERS="log",
        DISPATCHER_QUEUE=f"{namespace}-orders",
    )
    # When Kombo lists one of them twice on the page a replay reads
    replayed = run(["replay", "--integration", INTEGRATION, "--handlers", "log"], env)
    assert replayed.returncode == 0, replayed.stderr
    assert requests
    # Then each order is queued once: one job id each in the queue, the copy reported
    queue = [job_id.decode() for job_id in redis.lrange(f"rq:queue:{namespace}-orders", 0, -1)]
    assert len(queue) == 2 and len(set(queue)) == 2, queue
    assert replayed.stdout.splitlines()[0].startswith(f"2 orders of {INTEGRATION} queued")
    assert "1 listed more than once by Kombo, queued once: T1" in replayed.stdout


def test_replay_prints_kombos_error_as_one_line_without_the_key(redis_url: str) -> None:
    # Kombo (or anything at KOMBO_BASE_URL) answers the listing with an error echoing the
    # request's headers, upper-cased too, after a line break that forges a second line.
    with json_server(echoing_kombo) as url:
        env = dispatcher_env(
            redis_url,
            KOMBO_BASE_URL=url,
            KOMBO_API_KEY=API_KEY,
            KOMBO_INTEGRATION_IDS="greenhouse:Echo-repr",
            DISPATCHER_HANDLERS="log",
            KOMBO_RETRY_BUDGET="0",
            # The deployment's other secrets, in the environment as usual.
            DISPATCHER_API_TOKEN=API_TOKEN,
            KOMBO_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SMTP_URL=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:9",
            PROVISION_TOKEN=PROVISION_TOKEN,
        )
        results = [
            run(["replay", "--integration", f"greenhouse:Echo-{kind}", "--handlers", "log"], env)
            for kind in ("repr", "upper")
        ]
    for result in results:
        assert result.returncode == 1, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("dispatcher: error: integration greenhouse:Echo-")
        assert "PLATFORM.INPUT_INVALID" in line and "FORGED" in line
        assert not exposed(result.stdout + result.stderr), line
