"""RQ's own log lines in a dispatcher worker: its lifecycle lines (started, listening, shutting
down, suspended) stay INFO, its per-job and maintenance INFO lines (taken, completed, OK,
result kept...) are DEBUG.

Two ways, one rule (``RQ_LIFECYCLE_MESSAGES``): a worker logs through :class:`QuietRqLog`,
which decides before a record is made (RQ's ``self.log.info`` is called four to five times
per job: building and then dropping those records was 4% of a threaded worker's CPU); the
filter of :func:`demote_rq_chatter` catches what RQ logs through its module loggers
directly (a fork-mode work horse, the scheduler, ``rq.job``).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from dispatcher.store.rq_internals import RQ_LIFECYCLE_MESSAGES

__all__ = ["QuietRqLog", "demote_rq_chatter"]


def _chatter(level: int, msg: object) -> bool:
    return level == logging.INFO and not (
        isinstance(msg, str) and msg.startswith(RQ_LIFECYCLE_MESSAGES)
    )


class _DemoteRqChatter(logging.Filter):
    """RQ's per-job and maintenance INFO records become DEBUG ones (see module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _chatter(record.levelno, record.msg):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


_demote = _DemoteRqChatter()


def demote_rq_chatter() -> None:
    """Put RQ's per-job and maintenance INFO lines at DEBUG (idempotent)."""
    for name in ("rq.worker", "rq.job"):  # rq.job: "scheduled for retry at ..."
        rq_log = logging.getLogger(name)
        if _demote not in rq_log.filters:
            rq_log.addFilter(_demote)


class QuietRqLog(logging.LoggerAdapter[logging.Logger]):
    """A worker's ``self.log``: RQ's logger, with its chatter logged at DEBUG from the start,
    so that no record is made for it unless DEBUG is on."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, None)

    @property
    def level(self) -> int:  # RQ reads ``self.log.level`` for its scheduler's logging
        return self.logger.level

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if _chatter(level, msg):
            level = logging.DEBUG
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        return msg, kwargs
