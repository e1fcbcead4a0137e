"""Kombo assessment order dispatcher.

The public surface for handler authors and embedders; everything else is internal.
"""

from .kombo import (
    InvalidPageError,
    KomboClient,
    KomboError,
    KomboLimitError,
    KomboStopped,
    OrdersPage,
)
from .ledger import DispatchResult, Ledger
from .models import (
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
from .plugins import (
    Effects,
    Handler,
    HandlerConfigError,
    HandlerContext,
    PermanentFailure,
    RetryLater,
    handler_settings,
)
from .settings import ConfigError, Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "Application",
    "Candidate",
    "ConfigError",
    "DispatchResult",
    "Effects",
    "Handler",
    "HandlerConfigError",
    "HandlerContext",
    "HiringTeamMember",
    "HiringTeamRole",
    "InvalidPageError",
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
    "PermanentFailure",
    "RawOrder",
    "RetryLater",
    "Settings",
    "__version__",
    "handler_settings",
    "load_settings",
]
