"""Test support: a private redis-server, and small builders shared by the tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import AuthenticationError as AuthenticationError_
from redis.exceptions import ResponseError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free port that tests may stop, kill and restart."""

    def __init__(self, *, appendonly: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dispatcher-redis-"))
        self.appendonly = appendonly
        self.extra_args: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        client = Redis(port=self.port, socket_connect_timeout=0.5)
        while True:
            try:
                client.ping()
                break
            except (AuthenticationError_, ResponseError):
                break  # up, and asking for the password we did not give
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"redis-server did not start: {err}") from None
                time.sleep(0.02)
        client.close()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(
    predicate: Callable[[], object], timeout: float = 30, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 20 ms until it is true; fail naming ``what`` after ``timeout``
    seconds. How a test waits for something to happen: a fixed sleep is either too long
    (slow) or too short (flaky)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def order_payload(order_id: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid order as Kombo returns it."""
    order: dict[str, Any] = {
        "id": order_id,
        "package_id": "typescript_test",
        "status": "OPEN",
        "candidate": {
            "remote_id": "c1",
            "email": f"{order_id.lower()}@example.com",
            "first_name": "Zoë",
            "last_name": "Doe",
            "phone": None,
        },
        "application": {"remote_id": None},
        "job": {
            "remote_id": "j1",
            "name": "Bottle Opener",
            "job_code": None,
            "description": "<p>Open bottles</p>",
            "location": None,
            "hiring_team": [
                {
                    "remote_id": "u1",
                    "email": "jane@example.com",
                    "first_name": "Jane",
                    "last_name": "Doe",
                    "hiring_team_roles": ["RECRUITER"],
                }
            ],
        },
    }
    order.update(overrides)
    return order


def dispatcher_env(redis_url: str, **extra: str) -> dict[str, str]:
    """An environment for a ``dispatcher`` subprocess, isolated from the caller's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("KOMBO_", "DISPATCHER_", "REDIS_", "PROVISION_", "SMTP_", "NOTIFY_"))
    }
    env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


def text(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (RQ's work horse leaves its worker's
    process group, so killing the group is not enough to lose a machine's worth of work)."""
    import signal as _signal

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    doomed, stack = [], [pid]
    while stack:
        current = stack.pop()
        doomed.append(current)
        stack.extend(children.get(current, []))
    for victim in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, _signal.SIGKILL)
