"""What `from dispatcher import ...` offers: handler authors and embedders import these, so the
set changes only on purpose (and then this list with it)."""

from __future__ import annotations

import dispatcher
import dispatcher.handler

EXPORTED = {
    # the handler contract (dispatcher/handler.py)
    "BaseHandler",
    "Effects",
    "Handler",
    "HandlerConfigError",
    "HandlerContext",
    "PermanentFailure",
    "RetryLater",
    "handler_settings",
    # the order a handler gets (dispatcher/kombo/models.py)
    "Application",
    "Candidate",
    "HiringTeamMember",
    "HiringTeamRole",
    "Job",
    "Location",
    "Order",
    "OrderStatus",
    "RawOrder",
    # for embedders: the Kombo client, settings, the ledger
    "InvalidPageError",
    "KomboClient",
    "KomboError",
    "KomboLimitError",
    "KomboStopped",
    "OrdersPage",
    "ConfigError",
    "Settings",
    "load_settings",
    "DispatchResult",
    "Ledger",
    # The way back: results to Kombo through the outbox.
    "AssessmentResult",
    "FinalResultError",
    "InvalidResultError",
    "OutboxRecord",
    "ResultReceipt",
    "submit_result",
    # The one rule for text from Kombo, vendors and clients (a handler's failure reasons).
    "untrusted_text",
    # A cookie jar keeping nothing: a handler's client serves every customer's orders.
    "no_cookies",
    "__version__",
}


def test_the_exported_names_are_exactly_the_public_api() -> None:
    assert set(dispatcher.__all__) == EXPORTED
    assert len(dispatcher.__all__) == len(EXPORTED)  # no name twice


def test_every_exported_name_resolves() -> None:
    for name in dispatcher.__all__:
        assert getattr(dispatcher, name) is not None, name


def test_the_whole_contract_is_exported_from_one_module() -> None:
    assert set(dispatcher.handler.__all__) <= EXPORTED
    for name in dispatcher.handler.__all__:
        assert getattr(dispatcher, name) is getattr(dispatcher.handler, name)
        assert getattr(dispatcher, name).__module__ == "dispatcher.handler"
