"""Kombo's answers as exceptions: its error envelope, the client's own limits, a stop."""

from __future__ import annotations

__all__ = ["RETRYABLE_CODES", "KomboError", "KomboLimitError", "KomboStopped"]

RETRYABLE_CODES = frozenset(
    {
        "PLATFORM.RATE_LIMIT_EXCEEDED",
        "PLATFORM.CONCURRENCY_LIMIT_EXCEEDED",
        "PLATFORM.TASK_TIMED_OUT",
        "PLATFORM.UNKNOWN_ERROR",
        "REMOTE.SERVICE_UNAVAILABLE",
        "REMOTE.RATE_LIMIT_EXCEEDED",
    }
)
# Kombo asks clients to branch on the code; these codes are never worth a retry whatever
# the HTTP status says.
_PERMANENT_PREFIXES = ("PLATFORM.AUTHENTICATION", "PLATFORM.INPUT", "PLATFORM.INTEGRATION_NOT")


class KomboError(Exception):
    """Kombo answered with an error (its envelope), or could not be reached.

    ``code`` is Kombo's error code (``None`` when Kombo sent none or for network errors),
    ``status_code`` the HTTP status (``None`` for network errors), ``retry_after`` the
    seconds of Kombo's ``Retry-After`` header when it sent one.
    """

    retry_after: float | None = None
    # No connection could be made (refused, unroutable, timed out connecting): the client
    # logged it once for the outage, so callers need not log it per request.
    unreachable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        title: str | None = None,
        log_url: str | None = None,
        status_code: int | None = None,
        integration_id: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.title = title
        self.log_url = log_url
        self.status_code = status_code
        self.integration_id = integration_id
        super().__init__(self._line())

    def _line(self) -> str:
        where = f"integration {self.integration_id}: " if self.integration_id else ""
        what = self.code or (f"HTTP {self.status_code}" if self.status_code else "network")
        return f"{where}{what}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Whether trying the same request later may succeed."""
        if self.code is not None:
            if self.code in RETRYABLE_CODES:
                return True
            if self.code.startswith(_PERMANENT_PREFIXES):
                return False
        if self.status_code is None:
            return True  # network error or timeout
        return self.status_code == 429 or self.status_code >= 500


class KomboLimitError(KomboError):
    """Kombo's answer broke one of the client's limits: a response larger than
    ``max_response_bytes``, a cursor already followed in the same listing (``CURSOR_LOOP``),
    more pages than ``max_pages`` (``TOO_MANY_PAGES``). Never retried: asking again would
    break it again. ``code`` is the client's own (Kombo's codes have a ``PLATFORM.`` or
    ``REMOTE.`` prefix)."""

    @property
    def retryable(self) -> bool:
        return False


class KomboStopped(Exception):
    """The client was asked to stop (``should_stop``): it sends no further request, not even
    a retry. Not a failure of the integration: the work is left for the next sweep."""
