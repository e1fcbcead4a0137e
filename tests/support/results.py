"""Support for the results API's tests: its bearer token, and results workers as processes."""

from __future__ import annotations

import subprocess
import sys

from support import kill_tree

TOKEN = "results-token-0123456789"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Fleet:
    """Results workers (``dispatcher worker --results``, the Procfile's ``results`` line) as
    subprocesses."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, processes: int = 1) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatcher",
                "worker",
                "--results",
                "--processes",
                str(processes),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_tree(proc.pid)
                proc.wait(10)
