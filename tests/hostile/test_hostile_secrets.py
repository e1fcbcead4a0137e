"""Hostile input, items 5 and 6 of issue 12: handlers' secrets in failure reasons, and
log-line forgery in the text format.

Vendor APIs answer anything: an error body may echo the Authorization header the handler sent,
or be megabytes long. Ids, names and messages from Kombo and the ATSs may hold newlines and
other control characters. Each test reproduces the attack through the real parts (a vendor
stand-in and an SMTP server on real sockets, real Redis, the worker, the CLI in a subprocess)
and looks where the attacker would.
"""

from __future__ import annotations

import io
import json
import logging
import re
import smtplib
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis

from dispatcher import HandlerContext, Order, PermanentFailure, handler_settings
from dispatcher.logs import configure_logging, escape_controls
from dispatcher.redact import protect_secrets
from dispatcher.store.failures import MAX_REASON_LENGTH, MAX_TRACEBACK_LENGTH, clean_reason
from dispatcher.testing.sim import Simulator
from dispatcher.web.webhook import WEBHOOK_PATH
from dispatcher_handlers.log import LogHandler
from dispatcher_handlers.notify_email import EmailSettings
from dispatcher_handlers.notify_webhook import NotifyWebhookHandler
from support import free_port
from support.hostile import redis_values
from support.ops import FailsFor, dispatcher, env_for, settings_for, sweep, work
from support.webhook import AppClient, event_body, make_app, make_ledger, signed

PROVISION_TOKEN = "tok_ECHOEDvendor7c41"
# Percent-encoded in SMTP_URL; the client sends it (and the server echoes it) decoded.
SMTP_PASSWORD = "pw_ECHOED%2Fsmtp3d9"
SMTP_PASSWORD_SENT = unquote(SMTP_PASSWORD)


# -- where secrets could end up ---------------------------------------------------------------


def leaks(redis: Redis, secret: str) -> list[bytes]:
    return [value[:120] for value in redis_values(redis) if secret.encode() in value]


# -- a vendor API that echoes the request's headers -----------------------------------------


class EchoingVendor:
    """A vendor API on a real socket that answers every POST with ``status`` and a body
    echoing the request headers (as some frameworks' debug error pages do)."""

    def __init__(self, status: int) -> None:
        self.calls = 0
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                vendor.calls += 1
                echoed = "".join(f"{name}: {value}\n" for name, value in self.headers.items())
                if status == 200:
                    body = json.dumps({"test_url": "https://t.example/1", "request": echoed})
                else:
                    body = json.dumps({"message": f"unauthorized\nrequest was:\n{echoed}"})
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/provision"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sim() -> Simulator:
    return Simulator(["greenhouse:EchoTest"], 0, seed=12)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("status", [401, 500])
def test_a_vendor_echoing_the_token_leaks_it_to_no_log_cli_output_or_redis_value(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator, status: int
) -> None:
    # Given an order, and a vendor whose error answer (401: permanent, 500: retryable, no
    # retries left) echoes "Authorization: Bearer <PROVISION_TOKEN>".
    integration = sim.integration_ids[0]
    order = sim.add_order(integration, id="EchoOrder1")
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="log,provision_http")
    vendor = EchoingVendor(status)
    try:
        env = env_for(
            redis_url,
            settings,
            PROVISION_URL=vendor.url,
            PROVISION_TOKEN=PROVISION_TOKEN,
            DISPATCHER_MAX_RETRIES="0",
        )
        with sim.serve() as server:
            poll = dispatcher(
                ["--log-level", "DEBUG", "poll", "--once"], {**env, "KOMBO_BASE_URL": server.url}
            )
        # When the real worker runs the chain at DEBUG, then an operator looks at the failure.
        worker = dispatcher(["--log-level", "DEBUG", "worker", "--burst"], env)
        outputs = [
            dispatcher(args, env)
            for args in (
                ["failed"],
                ["failed", "--json"],
                ["show", order["id"]],
                ["show", order["id"], "--json"],
            )
        ]
    finally:
        vendor.close()
    assert poll.returncode == 0, poll.stderr
    assert worker.returncode == 0, worker.stderr
    assert vendor.calls == 1
    logs = worker.stdout + worker.stderr
    assert "DEBUG" in logs and "provision_http" in logs
    # Then the token is nowhere: not in the logs, the CLI's output, or any Redis value...
    assert PROVISION_TOKEN not in logs
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert PROVISION_TOKEN not in result.stdout + result.stderr, result.args
    assert not leaks(redis, PROVISION_TOKEN)
    # ...while the failure is still told: the handler, the vendor's answer, the mask.
    failed = json.loads(outputs[1].stdout.splitlines()[0])
    assert failed["handler"] == "provision_http"
    assert f"HTTP {status}" in failed["reason"] and "Bearer ***" in failed["reason"]
    assert "\n" not in failed["reason"]
    assert "Bearer ***" in outputs[2].stdout


def test_a_notification_webhook_url_is_a_secret_masked_in_logs_and_reprs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Slack incoming-webhook URL is a credential: whoever has it posts to the channel.
    url = "https://hooks.slack.example/services/T0000/B0000/XXslackTOKENsecret42"
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", url)
    handler = NotifyWebhookHandler()
    try:
        assert "XXslackTOKENsecret42" not in repr(handler.settings)
        stream = io.StringIO()
        configure_logging("DEBUG", "text", stream=stream)
        try:
            logging.getLogger("dispatcher.handlers.notify_webhook").warning("posting to %s", url)
        finally:
            configure_logging("WARNING", "text")
        assert "XXslackTOKENsecret42" not in stream.getvalue()
        assert "posting to ***" in stream.getvalue()
    finally:
        handler.close()


@pytest.mark.redis
def test_a_token_echoed_in_a_successful_answer_is_not_stored_as_the_steps_output(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator
) -> None:
    integration = sim.integration_ids[0]
    sim.add_order(integration, id="EchoOrder2")
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_HANDLERS="provision_http")
    vendor = EchoingVendor(200)
    try:
        env = env_for(
            redis_url, settings, PROVISION_URL=vendor.url, PROVISION_TOKEN=PROVISION_TOKEN
        )
        sweep(redis, settings, sim)
        worker = dispatcher(["--log-level", "DEBUG", "worker", "--burst"], env)
    finally:
        vendor.close()
    assert worker.returncode == 0, worker.stderr
    assert vendor.calls == 1
    assert PROVISION_TOKEN not in worker.stdout + worker.stderr
    assert not leaks(redis, PROVISION_TOKEN)
    assert any(b"Bearer ***" in value for value in redis_values(redis))  # the output is kept


# -- an SMTP server that echoes the credentials -----------------------------------------------


class _Echoing:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@pytest.fixture
def echoing_smtp() -> Iterator[int]:
    """An SMTP server refusing every login with a message echoing the credentials."""

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        sent = f"{data.login.decode()}/{data.password.decode()}"
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 refused {sent}")

    port = free_port()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # AUTH without TLS: loopback only
        controller = Controller(
            _Echoing(),
            hostname="127.0.0.1",
            port=port,
            authenticator=authenticator,
            auth_required=True,
            auth_require_tls=False,
        )
        controller.start()
    yield port
    controller.stop()


class CarelessMailer:
    """A vendor's plugin that builds its settings through handler_settings (SMTP_URL is a
    SecretStr) and puts the SMTP server's whole answer into its failure."""

    name = "careless_mail"

    def __init__(self) -> None:
        self.settings = handler_settings(EmailSettings)

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        url = urlsplit(self.settings.smtp_url.get_secret_value())
        with smtplib.SMTP(url.hostname or "", url.port or 25, timeout=5) as smtp:
            try:
                smtp.login(unquote(url.username or ""), unquote(url.password or ""))
            except smtplib.SMTPAuthenticationError as exc:
                context.logger.debug("SMTP said %s", exc)
                raise PermanentFailure(f"SMTP login failed: {exc}") from exc
        return {}


@pytest.mark.redis
def test_an_smtp_password_echoed_by_the_server_leaks_nowhere(
    redis: Redis,
    redis_url: str,
    namespace: str,
    sim: Simulator,
    echoing_smtp: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order = sim.add_order(sim.integration_ids[0], id="MailOrder1")
    smtp_url = f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:{echoing_smtp}"
    monkeypatch.setenv("SMTP_URL", smtp_url)
    monkeypatch.setenv("NOTIFY_FROM", "tests@acme.example")
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_MAX_RETRIES="0")
    sweep(redis, settings, sim)
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    work(redis, settings, [CarelessMailer()], logging_level="DEBUG")
    env = env_for(redis_url, settings, SMTP_URL=smtp_url, NOTIFY_FROM="tests@acme.example")
    shown = [dispatcher(args, env) for args in (["failed", "--json"], ["show", order["id"]])]
    logs = stream.getvalue()
    assert "SMTP said" in logs and "refused mailer/***" in logs
    for secret in (SMTP_PASSWORD, SMTP_PASSWORD_SENT):
        assert secret not in logs
        assert all(secret not in r.stdout + r.stderr for r in shown)
        assert not leaks(redis, secret)
    assert "SMTP login failed" in json.loads(shown[0].stdout)["reason"]


# -- bounded reasons, short secrets ----------------------------------------------------------


class Verbose:
    """A handler failing with a megabyte error message (a vendor's whole error page)."""

    name = "verbose"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        raise PermanentFailure("vendor page: " + "x" * 1_000_000 + " the end")


@pytest.mark.redis
def test_a_megabyte_error_is_stored_as_a_bounded_reason_and_traceback(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator
) -> None:
    order = sim.add_order(sim.integration_ids[0], id="BigError1")
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_MAX_RETRIES="0")
    sweep(redis, settings, sim)
    work(redis, settings, [Verbose()])
    failed = dispatcher(["failed", "--json"], env_for(redis_url, settings))
    reason = json.loads(failed.stdout)["reason"]
    assert reason.startswith("vendor page: xxx") and len(reason) <= MAX_REASON_LENGTH
    # Nothing RQ or the dispatcher stored holds the megabyte (the seen store aside, every
    # value is a job's: its hash, meta, results stream).
    biggest = max(len(value) for value in redis_values(redis))
    assert biggest <= MAX_TRACEBACK_LENGTH + 5_000, biggest
    assert order["id"] in failed.stdout


class _Tiny(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, populate_by_name=True)

    token: SecretStr = Field(alias="TINY_TOKEN")


def test_a_short_secret_does_not_garble_the_logs_and_its_setting_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TINY_TOKEN", "ab1")
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    handler_settings(_Tiny)
    logging.getLogger("dispatcher.test").info("cab1 table ab1 tab")
    lines = stream.getvalue().splitlines()
    assert any("TINY_TOKEN: shorter than 6 characters" in line for line in lines), lines
    assert lines[-1].endswith("dispatcher.test: cab1 table ab1 tab")


# -- item 6: one record, one line ---------------------------------------------------------------

FORGED = "x\n2026-01-01 00:00:00,000 ERROR   dispatcher.poller.poller: FORGED"
_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +\S+: ")


def assert_one_line_per_record(text: str, records: int) -> list[str]:
    lines = text.splitlines()  # also breaks at \x0b \x0c \x1c-\x1e \x85 \u2028 \u2029
    assert len(lines) == records, lines
    assert all(_RECORD_START.match(line) for line in lines), lines
    assert not any(line.startswith("2026-01-01 00:00:00,000") for line in lines), lines
    return lines


@pytest.mark.redis
def test_an_order_forging_log_lines_through_the_poller_and_the_worker_stays_on_its_own_line(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator(["greenhouse:Forge1", "lever:Forge2"], 0, seed=6)
    job = {"remote_id": "j1", "name": f"Engineer{FORGED}", "hiring_team": []}
    # Ids with control characters are refused at the door (they never reach a log line raw);
    # names are not, and the worker logs the job's name.
    sim.add_order(sim.integration_ids[0], id="ok1", package_id="pkg1", job=job)
    sim.add_order(sim.integration_ids[1], id=f"bad{FORGED}", candidate={"email": 5})
    settings = settings_for(redis_url, sim, namespace)
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    sweep(redis, settings, sim)
    work(redis, settings, [LogHandler()], logging_level="DEBUG")
    text = stream.getvalue()
    lines = assert_one_line_per_record(text, len(text.splitlines()))
    assert "FORGED" in text  # the name is shown, escaped, on its own record's line
    assert any(f"job Engineer{escape_controls(FORGED)}" in line for line in lines)
    assert any("lever:Forge2" in line and "field id" in line for line in lines)


def test_a_webhook_event_and_integration_id_cannot_forge_log_lines(fake_redis: Redis) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    app = make_app(make_ledger(fake_redis))
    from support import order_payload

    body = event_body(order_payload("Order1"), f"acme:{FORGED}", event_id=f"evt{FORGED}")
    AppClient(app).post(WEBHOOK_PATH, content=body, headers=signed(body))
    text = stream.getvalue()
    assert "evt" in text
    assert_one_line_per_record(text, len(text.splitlines()))


def test_a_traceback_with_a_forged_line_is_part_of_its_record() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    try:
        raise ValueError(f"bad order {FORGED}")
    except ValueError:
        logging.getLogger("dispatcher.test").exception("failed", extra={"order_id": FORGED})
    (line,) = assert_one_line_per_record(stream.getvalue(), 1)
    assert "Traceback (most recent call last):\\n" in line and "ValueError: bad order x\\n" in line


# Ids and names as an attacker would send them: separators, every control character, unicode.
_hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(":/\\\n\r\t\x00\x1b\x7f\x85\u2028\u2029\u202e\x0b\x0c\x1c"),
        st.characters(codec="utf-8"),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order_id=_hostile_text, integration_id=_hostile_text, name=_hostile_text)
def test_every_text_record_is_one_line_whatever_the_ids_hold(
    order_id: str, integration_id: str, name: str
) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    log = logging.getLogger("dispatcher.test")
    extra = {"order_id": order_id, "integration_id": integration_id}
    # DEBUG: above it, anything like an email address is masked as personal data.
    log.debug("order %s for job %s", order_id, name, extra=extra)
    log.debug(f"job {name}", extra=extra)
    lines = assert_one_line_per_record(stream.getvalue(), 2)
    for line in lines:
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]", line)
    assert f"order {escape_controls(order_id)} for job {escape_controls(name)}" in lines[0]
    assert f"order_id={escape_controls(order_id)}" in lines[0]
    assert f"integration_id={escape_controls(integration_id)}" in lines[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order_id=_hostile_text, name=_hostile_text)
def test_every_json_record_is_one_object_on_one_line_holding_the_exact_values(
    order_id: str, name: str
) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    logging.getLogger("dispatcher.test").debug("job %s", name, extra={"order_id": order_id})
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == f"job {name}" and entry["order_id"] == order_id


@pytest.mark.redis
def test_an_order_id_forging_a_failure_line_cannot_blame_another_handler(
    redis: Redis, redis_url: str, namespace: str, sim: Simulator
) -> None:
    # The handler and reason shown by `dispatcher failed` are read back from the exception
    # line RQ stores: an order id holding a fake failure line must not become it. (A newline
    # in an id is refused at the door now; spaces are not, and Kombo ids are opaque.)
    forged_id = "o1 handler innocent failed on order o2 (integration x): forged reason"
    sim.add_order(sim.integration_ids[0], id=forged_id)
    settings = settings_for(redis_url, sim, namespace, DISPATCHER_MAX_RETRIES="0")
    sweep(redis, settings, sim)
    work(redis, settings, [FailsFor("guilty", {forged_id}, reason="vendor said no")])
    failed = json.loads(dispatcher(["failed", "--json"], env_for(redis_url, settings)).stdout)
    assert failed["handler"] == "guilty"
    assert failed["reason"].startswith("vendor said no") and "forged" not in failed["reason"]


@settings(max_examples=200, deadline=None)
@given(text=_hostile_text, padding=st.integers(0, 3 * MAX_REASON_LENGTH))
def test_a_cleaned_reason_is_one_bounded_line_without_a_registered_secret(
    text: str, padding: int
) -> None:
    protect_secrets([PROVISION_TOKEN])
    reason = clean_reason(f"{text}{'y' * padding} Bearer {PROVISION_TOKEN} {text}")
    assert len(reason) <= MAX_REASON_LENGTH and len(reason.splitlines()) <= 1
    assert PROVISION_TOKEN not in reason and PROVISION_TOKEN[:-1] not in reason
