"""A private ``redis-server`` on a free port, for the tests and the benchmarks.

Nothing is shared with a Redis the machine already runs: the server listens on loopback in a
throwaway directory, and a test may stop, kill and restart it (with ``appendonly`` its data
survives a restart).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError

from dispatcher.testing import free_port

__all__ = ["RedisServer", "private_redis"]


class RedisServer:
    """A private ``redis-server`` on a free port that tests may stop, kill and restart."""

    def __init__(self, *, appendonly: bool = False) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dispatcher-redis-"))
        self.appendonly = appendonly
        self.extra_args: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers (or asks for a password)."""
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
        try:
            while True:
                try:
                    client.ping()
                    break
                except (AuthenticationError, ResponseError):
                    break  # up, and asking for the password we did not give
                except Exception:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        stderr = self.process.stderr
                        err = stderr.read().decode() if stderr else ""
                        raise RuntimeError(f"redis-server did not start: {err}") from None
                    time.sleep(0.02)
        finally:
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
        """Kill the server and remove its directory."""
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis() -> Iterator[str]:
    """Start a throwaway redis-server (nothing on disk) and yield its URL."""
    server = RedisServer()
    try:
        server.start()
        yield server.url
    finally:
        server.cleanup()
