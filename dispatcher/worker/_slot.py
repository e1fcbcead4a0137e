"""One object per worker process, installed at start or built on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


class ProcessSlot(Generic[_T]):
    """Holds what a process's jobs share. RQ calls job functions by import path, so they
    cannot be handed it: the worker installs it at start, and a plain ``rq worker`` builds
    it from the environment on first use (thread-safe: threaded workers share it)."""

    def __init__(self, build: Callable[[], _T]) -> None:
        self._build = build
        self._value: _T | None = None
        self._lock = threading.Lock()

    def install(self, value: _T | None) -> None:
        """Make ``value`` the one this process uses (``None`` to reset)."""
        with self._lock:
            self._value = value

    def get(self) -> _T:
        """The installed object, built when none was installed."""
        with self._lock:
            if self._value is None:
                self._value = self._build()
            return self._value
