"""How long `dispatcher worker` takes to stop: a burst on an empty queue, and a SIGTERM to an
idle worker. Shared by tests/worker/test_worker_stop.py and, run as a script, the measurement of
many runs per worker mode (median and max), optionally beside a CPU-bound process:

    .venv/bin/python -m dispatcher.testing.worker_stop --runs 20 --cpu-hog
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from redis import Redis

from dispatcher.testing.redis_server import RedisServer

__all__ = ["MODES", "burst_seconds", "sigterm_seconds"]

# Worker modes: extra arguments and environment of `dispatcher worker`.
MODES: dict[str, tuple[list[str], dict[str, str]]] = {
    "forking": ([], {"DISPATCHER_FORK_PER_JOB": "true"}),
    "in-process": ([], {"DISPATCHER_FORK_PER_JOB": "false"}),
    "threaded": (["--threads", "4"], {}),
}


def _env(redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its dispatcher settings, plus these."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KOMBO_", "DISPATCHER_", "REDIS_", "PROVISION_", "SMTP_", "NOTIFY_"))
    }
    return {**env, "REDIS_URL": redis_url, **extra}


def burst_seconds(redis_url: str, mode: str, *, timeout: float = 90) -> tuple[float, str]:
    """Run `dispatcher worker --burst` on an empty queue; (seconds to exit, its output)."""
    args, extra = MODES[mode]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "worker", "--burst", *args],
        env=_env(redis_url, extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return took, done.stdout + done.stderr


def listening_to_exit(output: str, exited_at: float) -> float | None:
    """Seconds from the worker's "Listening on" line (its start-up done: imports, checks,
    registration) to ``exited_at`` (unix time): the burst itself and the shutdown."""
    for line in output.splitlines():
        if "*** Listening on" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return exited_at - stamp.timestamp()
    return None


def sigterm_seconds(
    redis: Redis, redis_url: str, mode: str, *, timeout: float = 90
) -> tuple[float, str]:
    """Start an idle `dispatcher worker`, SIGTERM it once it listens; (seconds from the
    signal to its exit, its output)."""
    args, extra = MODES[mode]
    before = set(redis.smembers("rq:workers"))
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "worker", *args],
        env=_env(redis_url, extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _idle(redis, before):  # in its loop, its signal handlers installed
            assert process.poll() is None, process.communicate()[0][-2000:]
            assert time.monotonic() < deadline, "the worker never waited for a job"
            time.sleep(0.02)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=timeout)
        took = time.monotonic() - signalled
        assert process.returncode == 0, f"exit status {process.returncode}\n{output[-2000:]}"
        return took, output
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _idle(redis: Redis, before: set[Any]) -> bool:
    """A worker registered since ``before`` is idle: waiting for a job."""
    for key in set(redis.smembers("rq:workers")) - before:
        if redis.hget(key, "state") == b"idle":
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description="how long `dispatcher worker` takes to stop")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--modes", default="forking,in-process,threaded")
    parser.add_argument("--cpu-hog", action="store_true", help="a `while 1: pass` beside")
    options = parser.parse_args()
    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"]) if options.cpu_hog else None
    server = RedisServer()
    server.start()
    try:
        for mode in options.modes.split(","):
            times, tails = [], []
            for _ in range(options.runs):
                took, output = burst_seconds(server.url, mode)
                times.append(took)
                tail = listening_to_exit(output, time.time())
                if tail is not None:
                    tails.append(tail)
            print(
                f"{mode:11} burst on an empty queue, {options.runs} runs: median "
                f"{statistics.median(times):.2f}s, max {max(times):.2f}s, over 5 s: "
                f"{sum(t > 5 for t in times)}; from 'Listening on' to exit: median "
                f"{statistics.median(tails):.2f}s, max {max(tails):.2f}s",
                flush=True,
            )
    finally:
        server.cleanup()
        if hog is not None:
            hog.kill()
            hog.wait()


if __name__ == "__main__":
    main()
