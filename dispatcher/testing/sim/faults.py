"""Faults the simulator answers with: random (:class:`Faults`) or forced one by one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FAULT_KINDS", "FaultKind", "Faults", "ForcedFault", "format_seconds", "take_forced"]

FaultKind = Literal["rate_limit", "server_error", "malformed", "drop_answer"]
FAULT_KINDS: tuple[FaultKind, ...] = ("rate_limit", "server_error", "malformed", "drop_answer")


@dataclass
class Faults:
    """Random faults, drawn per request from a seeded RNG. Mutable while the simulator runs."""

    rate_limit: float = 0.0
    """Probability per request of 429 ``PLATFORM.RATE_LIMIT_EXCEEDED`` with ``Retry-After``."""
    retry_after: float = 1.0
    """Seconds put in the ``Retry-After`` header of a 429."""
    server_error: float = 0.0
    """Probability per request of 500 ``PLATFORM.UNKNOWN_ERROR``."""
    malformed: float = 0.0
    """Probability per request of a 200 whose body is truncated, invalid JSON."""
    latency: float = 0.0
    """Seconds every request waits before it is answered (simulated network latency)."""
    drop_answer: float = 0.0
    """Probability per request that it is processed (a write applied) but its answer is
    lost: the connection drops (over a socket) or the transport raises (in process)."""

    def kind_drawn(self, draw: float) -> FaultKind | None:
        """The fault a uniform ``draw`` in [0, 1) falls on, each kind its probability's share."""
        probabilities = (self.rate_limit, self.server_error, self.malformed, self.drop_answer)
        for kind, probability in zip(FAULT_KINDS, probabilities, strict=True):
            if draw < probability:
                return kind
            draw -= probability
        return None


@dataclass
class ForcedFault:
    kind: FaultKind
    count: int
    integration_id: str | None


def format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def take_forced(forced: list[ForcedFault], integration_id: str) -> FaultKind | None:
    """The kind of the first forced fault that applies to ``integration_id`` (one of its
    count used up), or None."""
    for fault in forced:
        if fault.integration_id in (None, integration_id):
            fault.count -= 1
            if fault.count == 0:
                forced.remove(fault)
            return fault.kind
    return None
