from __future__ import annotations

import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher import BaseHandler, HandlerConfigError, HandlerContext, Order
from dispatcher.plugins import (
    ENTRY_POINT_GROUP,
    discover_handlers,
    find_acceptors,
    load_acceptors,
    load_handlers,
    may_accept,
)
from support import dispatcher_env, free_port, order_payload


class GoodHandler:
    name = "good"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return {"ok": True}


class MisnamedHandler(GoodHandler):
    name = "something-else"


class NoNameHandler:
    def handle(self, order: Order, context: HandlerContext) -> None:
        return None


class SlottedNoNameHandler:
    __slots__ = ()  # no `name`, and none can be given to it

    def handle(self, order: Order, context: HandlerContext) -> None:
        return None


class MisnamedNeedingSettings:
    name = "something-else"

    def __init__(self) -> None:
        raise RuntimeError("PROVISION_URL is not set")


def misnamed_factory() -> GoodHandler:
    handler = GoodHandler()
    handler.name = "something-else"
    return handler


class Based(BaseHandler):
    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        return {"based": True}


class BasedWithoutHandle(BaseHandler):
    pass


created: list[str] = []


class PickyHandler(BaseHandler):
    """Refuses at the door; needs no settings, and says when it is created."""

    def __init__(self) -> None:
        created.append("picky")

    def handle(self, order: Order, context: HandlerContext) -> None:
        return None

    def accepts(self, order: Order) -> str | None:
        return None if order.candidate.email else "No email."


class WrongSignatureHandler:
    name = "good"

    def handle(self, order: Order) -> None:
        return None


class ExplodingFactory:
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
        ("test_plugins:misnamed_factory", "good", r"its `name` is 'something-else'"),
        ("test_plugins:SlottedNoNameHandler", "good", r"has no `name` string attribute"),
        (
            "test_plugins:BasedWithoutHandle",
            "good",
            r"could not be created: TypeError: Can't instantiate abstract class",
        ),
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


def test_a_handler_without_a_name_takes_the_entry_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_entry_points(monkeypatch, crm="test_plugins:NoNameHandler", based="test_plugins:Based")
    assert [h.name for h in load_handlers(["crm", "based"])] == ["crm", "based"]


def test_a_name_that_differs_from_the_entry_point_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused before the class is created: its missing settings are not the problem.
    fake_entry_points(monkeypatch, crm="test_plugins:MisnamedNeedingSettings")
    with pytest.raises(HandlerConfigError) as raised:
        load_handlers(["crm"])
    assert str(raised.value) == (
        "handler 'crm': its `name` is 'something-else'; it must match the entry point "
        "(or be left out)"
    )


def test_the_base_class_hooks_are_no_ops_the_loader_skips() -> None:
    handler = Based()
    handler.name = "based"
    assert handler.accepts(Order.model_validate(order_payload("O1"))) is None
    handler.close()
    assert find_acceptors([handler]) == []  # its inherited accepts is never called
    picky = PickyHandler()
    picky.name = "picky"
    assert [a.handler for a in find_acceptors([picky])] == ["picky"]
    # The web process decides from the class alone whether to create a handler.
    assert not may_accept(Based)
    assert not may_accept(GoodHandler)
    assert may_accept(PickyHandler)
    assert may_accept(misnamed_factory)  # not a class: only calling it could tell


def test_only_handlers_with_an_accepts_are_created_for_the_web(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("PROVISION_URL", "SMTP_URL", "NOTIFY_FROM", "NOTIFY_WEBHOOK_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here either
    fake_entry_points(
        monkeypatch,
        provision_http="dispatcher_handlers.provision_http:ProvisionHttpHandler",
        notify_email="dispatcher_handlers.notify_email:NotifyEmailHandler",
        explodes="test_plugins:ExplodingFactory",
        picky="test_plugins:PickyHandler",
    )
    created.clear()
    names = ["provision_http", "notify_email", "picky", "explodes"]
    assert [a.handler for a in load_acceptors(names)] == ["picky"]
    assert created == ["picky"]
    with pytest.raises(HandlerConfigError, match="PROVISION_URL: not set"):
        load_handlers(names)  # what a worker does
    with pytest.raises(HandlerConfigError, match=r"handler 'nope' is not installed"):
        load_acceptors([*names, "nope"])  # still checked: a typo in the chain stops web too


def test_dispatcher_web_starts_without_the_workers_handler_settings(tmp_path: Path) -> None:
    # Given an installed plugin that refuses orders at the door, next to the built-ins
    (tmp_path / "picky_plugin.py").write_text(
        "import os\n"
        "from dispatcher import BaseHandler\n"
        "class PickyHandler(BaseHandler):\n"
        "    def __init__(self):\n"
        "        open(os.environ['PICKY_MARK'], 'a').write('created\\n')\n"
        "    def handle(self, order, context):\n"
        "        return None\n"
        "    def accepts(self, order):\n"
        "        return None\n"
    )
    dist = tmp_path / "picky_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: picky-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[dispatcher.handlers]\npicky = picky_plugin:PickyHandler\n"
    )
    mark = tmp_path / "created"
    port = free_port()
    # When `dispatcher web` starts with the whole chain and none of the built-ins' settings
    env = dispatcher_env(
        f"redis://127.0.0.1:{free_port()}/0",  # not needed to start
        PYTHONPATH=str(tmp_path),
        PICKY_MARK=str(mark),
        KOMBO_WEBHOOK_SECRET="secret",
        KOMBO_API_KEY="key",  # the receiver confirms webhook orders with Kombo
        DISPATCHER_HANDLERS="log,provision_http,notify_email,notify_webhook,picky",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatcher", "web", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
        # Then it serves, and only the plugin with an `accepts` was created
        assert mark.read_text() == "created\n"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    assert "/webhooks/kombo" in stderr
    assert "Traceback" not in stderr


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
