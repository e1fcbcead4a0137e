from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

from _support import dispatcher_env
from dispatcher import HandlerContext, Order
from dispatcher.plugins import (
    ENTRY_POINT_GROUP,
    HandlerConfigError,
    discover_handlers,
    load_handlers,
)


class GoodHandler:
    name = "good"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return {"ok": True}


class MisnamedHandler(GoodHandler):
    name = "something-else"


class NoNameHandler:
    def handle(self, order: Order, context: HandlerContext) -> None:
        return None


class WrongSignatureHandler:
    name = "good"

    def handle(self, order: Order) -> None:
        return None


class ExplodingFactory:
    name = "explodes"

    def __init__(self) -> None:
        raise RuntimeError("PROVISION_URL is not set")


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    points = [metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in values.items()]

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def test_the_builtin_log_handler_is_discovered_through_its_entry_point() -> None:
    found = discover_handlers()
    assert found["log"].value == "dispatcher_handlers.log:LogHandler"
    assert found["log"].distribution.startswith("kombo-dispatcher ")
    assert found["log"].error is None
    [handler] = load_handlers(["log"])
    assert handler.name == "log"


def test_handlers_load_in_the_configured_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(
        monkeypatch, good="test_plugins:GoodHandler", log="dispatcher_handlers.log:LogHandler"
    )
    assert [h.name for h in load_handlers(["log", "good"])] == ["log", "good"]


@pytest.mark.parametrize(
    ("value", "configured", "message"),
    [
        (
            "test_plugins:GoodHandler",
            "missing",
            r"handler 'missing' is not installed \(known: good\)",
        ),
        (
            "no_such_module:Handler",
            "good",
            r"handler 'good': failed to import no_such_module:Handler: ModuleNotFoundError",
        ),
        ("test_plugins:MisnamedHandler", "good", r"its `name` is 'something-else'"),
        ("test_plugins:NoNameHandler", "good", r"has no `name` string attribute"),
        ("test_plugins:WrongSignatureHandler", "good", r"`handle` must accept \(order, context\)"),
        (
            "test_plugins:ExplodingFactory",
            "good",
            r"could not be created: RuntimeError: PROVISION_URL is not set",
        ),
    ],
)
def test_a_broken_or_missing_handler_is_a_clear_error_at_load(
    monkeypatch: pytest.MonkeyPatch, value: str, configured: str, message: str
) -> None:
    fake_entry_points(monkeypatch, good=value)
    with pytest.raises(HandlerConfigError, match=message):
        load_handlers([configured])


def test_a_broken_plugin_does_not_hide_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, broken="no_such_module:X", good="test_plugins:GoodHandler")
    found = discover_handlers()
    assert found["broken"].error is not None
    assert [h.name for h in load_handlers(["good"])] == ["good"]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=dispatcher_env("redis://127.0.0.1:1/0", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_handlers_command_lists_handlers_with_their_distribution() -> None:
    result = run_cli("handlers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    log_line = next(line for line in lines if line.startswith("log "))
    assert "kombo-dispatcher" in log_line
    assert log_line.split()[1] == "1"  # first in the chain
    assert lines[-1] == "chain: log"


def test_handlers_command_fails_clearly_on_a_missing_handler() -> None:
    result = run_cli("handlers", DISPATCHER_HANDLERS="log,nope")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "dispatcher: error: DISPATCHER_HANDLERS: handler 'nope' is not installed "
        "(known: log, notify_email, notify_webhook, provision_http)"
    )


def test_handlers_command_shows_a_setup_error_in_the_handlers_row() -> None:
    # Issue 14, item 8: a handler whose own setting is missing was listed as fine, then the
    # error line did not say which handler it was.
    result = run_cli("handlers", DISPATCHER_HANDLERS="log,provision_http")
    assert result.returncode == 2
    rows = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert rows["provision_http"].split(None, 2)[1:] == ["2", "BROKEN: PROVISION_URL: not set"]
    assert "BROKEN" not in rows["log"]
    assert "BROKEN" not in rows["notify_email"]  # not configured: not created, not a problem
    assert result.stderr == "dispatcher: error: handler 'provision_http': PROVISION_URL: not set\n"


def test_a_worker_names_the_handler_whose_setup_fails() -> None:
    result = run_cli("worker", "--burst", DISPATCHER_HANDLERS="log,provision_http")
    assert result.returncode == 2
    assert result.stderr == "dispatcher: error: handler 'provision_http': PROVISION_URL: not set\n"


def test_worker_refuses_to_start_with_a_missing_handler() -> None:
    result = run_cli("worker", "--burst", DISPATCHER_HANDLERS="nope")
    assert result.returncode == 2
    assert "handler 'nope' is not installed" in result.stderr
    assert "Traceback" not in result.stderr
