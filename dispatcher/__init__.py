"""Kombo assessment order dispatcher.

The public surface for handler authors and embedders; everything else is internal.
"""

from dispatcher.handler import (
    BaseHandler,
    Effects,
    Handler,
    HandlerConfigError,
    HandlerContext,
    PermanentFailure,
    RetryLater,
    handler_settings,
)
from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError, KomboLimitError, KomboStopped
from dispatcher.kombo.models import (
    Application,
    Candidate,
    HiringTeamMember,
    HiringTeamRole,
    Job,
    Location,
    Order,
    OrderStatus,
    RawOrder,
)
from dispatcher.kombo.pages import InvalidPageError, OrdersPage
from dispatcher.kombo.results import AssessmentResult, InvalidResultError
from dispatcher.settings import ConfigError, Settings, load_settings
from dispatcher.store.ledger import DispatchResult, Ledger
from dispatcher.store.results import FinalResultError, OutboxRecord, ResultReceipt, submit_result
from dispatcher.untrusted import no_cookies, untrusted_text

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Jobs queued before the package was split into subpackages name their function
    # ``dispatcher.jobs.process_order``; RQ resolves that by getattr on this package once the
    # module import fails, so the old path keeps working without a module of that name.
    if name == "jobs":
        from .worker import jobs

        return jobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Application",
    "AssessmentResult",
    "BaseHandler",
    "Candidate",
    "ConfigError",
    "DispatchResult",
    "Effects",
    "FinalResultError",
    "Handler",
    "HandlerConfigError",
    "HandlerContext",
    "HiringTeamMember",
    "HiringTeamRole",
    "InvalidPageError",
    "InvalidResultError",
    "Job",
    "KomboClient",
    "KomboError",
    "KomboLimitError",
    "KomboStopped",
    "Ledger",
    "Location",
    "Order",
    "OrderStatus",
    "OrdersPage",
    "OutboxRecord",
    "PermanentFailure",
    "RawOrder",
    "ResultReceipt",
    "RetryLater",
    "Settings",
    "__version__",
    "handler_settings",
    "load_settings",
    "no_cookies",
    "submit_result",
    "untrusted_text",
]
