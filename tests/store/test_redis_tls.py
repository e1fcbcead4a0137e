"""Every process over TLS, for real: a private CA, a server that requires client certificates
(``redis-server --port 0 --tls-port P --tls-auth-clients yes``), and the ``dispatcher``
commands as subprocesses: poll, worker (forking and in-process, one and two processes),
status, web's /healthz, and RQ's own ``rq info``. A wrong CA is one line, no traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rq import Queue

from dispatcher.store.connection import connect
from dispatcher.testing.sim import DEFAULT_API_KEY, Simulator
from support import dispatcher_env, free_port
from support.redis_topology import Certificates, TlsRedis, make_certificates

# Slow: a TLS redis-server and a dozen CLI subprocesses; CI runs it in its second step.
pytestmark = [pytest.mark.redis, pytest.mark.slow]

TESTS = Path(__file__).resolve().parents[1]
# Every command builds its Redis client with dispatcher.store.connection.
RUNNERS = {"cli": [sys.executable, "-m", "dispatcher"]}


@pytest.fixture(scope="module")
def certs() -> Iterator[Certificates]:
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.skip("needs openssl and redis-server")
    directory = Path(tempfile.mkdtemp(prefix="dispatcher-certs-"))
    try:
        yield make_certificates(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(certs: Certificates) -> Iterator[TlsRedis]:
    try:
        server = TlsRedis(certs)
    except RuntimeError as exc:  # a redis-server built without TLS
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


def _env(url: str, sim: Simulator, **extra: str) -> dict[str, str]:
    values = {
        "KOMBO_API_KEY": DEFAULT_API_KEY,
        "KOMBO_BASE_URL": sim.base_url,
        "KOMBO_INTEGRATION_IDS": ",".join(sim.integration_ids),
        "DISPATCHER_HANDLERS": "log",
        "DISPATCHER_LOG_LEVEL": "WARNING",
        **extra,
    }
    return dispatcher_env(url, **values)


def _run(runner: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNERS[runner], *args], env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("runner", ["cli"])
@pytest.mark.parametrize(
    ("fork", "processes"), [("true", "1"), ("false", "1"), ("true", "2"), ("false", "2")]
)
def test_poll_worker_status_and_rq_info_over_tls(
    tls: TlsRedis, runner: str, fork: str, processes: str
) -> None:
    # Given a TLS-only Redis with client certificates, and 12 OPEN orders in Kombo
    url = tls.url()
    redis = connect(url)
    redis.flushall()
    sim = Simulator(["greenhouse:TLS000000000000000000"], 12, closed=0, seed=5)
    with sim.serve() as server:
        sim_env = _env(url, sim, KOMBO_BASE_URL=server.url, DISPATCHER_FORK_PER_JOB=fork)
        # When the poller sweeps and the workers drain the queue, all over TLS
        poll = _run(runner, "poll", "--once", env=sim_env)
        assert poll.returncode == 0, poll.stderr
    queue = Queue(f"{'dispatcher'}-orders", connection=redis)
    assert queue.count == 12
    worker = _run(runner, "worker", "--burst", "--processes", processes, env=sim_env)
    assert worker.returncode == 0, worker.stderr
    # Then every order ran, and status and rq info read it over TLS
    assert queue.count == 0 and queue.finished_job_registry.count == 12
    status = _run(runner, "status", "--json", env=sim_env)
    shown = json.loads(status.stdout)
    assert shown["orders"]["dispatched"] == 12, status.stderr
    assert shown["redis"]["version"] and shown["notices"]  # the TLS server persists nothing
    info = subprocess.run(
        [str(Path(sys.executable).with_name("rq")), "info", "-u", url, "--only-queues"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0 and "dispatcher-orders" in info.stdout, info.stderr


@pytest.mark.parametrize("runner", ["cli"])
def test_web_healthz_over_tls(tls: TlsRedis, runner: str) -> None:
    sim = Simulator(["greenhouse:TLS000000000000000000"], 0, closed=0, seed=5)
    port = free_port()
    web = subprocess.Popen(
        [*RUNNERS[runner], "web", "--port", str(port)],
        env=_env(tls.url(), sim),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert web.poll() is None and time.monotonic() < deadline, "web did not start"
                time.sleep(0.05)
        assert answer.status_code == 200
        assert answer.text.splitlines()[0] == "ok"
        assert any(
            line.startswith("notice: Redis persistence is off") for line in answer.text.splitlines()
        )
    finally:
        web.send_signal(signal.SIGTERM)
        web.wait(10)
        if web.stderr is not None:
            web.stderr.close()


@pytest.mark.parametrize("runner", ["cli"])
@pytest.mark.parametrize("command", [["status"], ["poll", "--once"], ["worker", "--burst"]])
def test_a_wrong_ca_is_one_line_and_no_traceback(
    tls: TlsRedis, certs: Certificates, runner: str, command: list[str]
) -> None:
    sim = Simulator(["greenhouse:TLS000000000000000000"], 0, closed=0, seed=5)
    url = tls.url(ca=certs.other_ca).replace("rediss://", "rediss://user:s3cretpassword@")
    done = _run(runner, *command, env=_env(url, sim))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "REDIS_URL" in lines[0] and "CERTIFICATE_VERIFY_FAILED" in lines[0]
    assert "Traceback" not in done.stderr and "s3cretpassword" not in done.stderr


def test_no_verification_warns_once(tls: TlsRedis, certs: Certificates) -> None:
    # A provider with a self-signed certificate: verification off, with one warning line.
    sim = Simulator(["greenhouse:TLS000000000000000000"], 0, closed=0, seed=5)
    url = (
        f"rediss://127.0.0.1:{tls.port}/0?ssl_cert_reqs=none"
        f"&ssl_certfile={certs.client_cert}&ssl_keyfile={certs.client_key}"
    )
    done = _run("cli", "status", "--json", env=_env(url, sim))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "ssl_cert_reqs=none" in line]
    assert len(warnings) == 1, done.stderr
    assert os.linesep not in warnings[0]
