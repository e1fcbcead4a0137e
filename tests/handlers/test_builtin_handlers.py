"""The built-in handlers against real servers: a local vendor API and a real SMTP server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import (
    HandlerConfigError,
    HandlerContext,
    PermanentFailure,
    RetryLater,
    Settings,
)
from dispatcher.kombo.models import Order, parse_order
from dispatcher.testing.mailbox import Mailbox
from dispatcher.testing.vendor import VendorAPI
from dispatcher.worker.steps import MemoryEffects, step_key
from dispatcher_handlers.notify_email import EmailSettings, NotifyEmailHandler
from dispatcher_handlers.provision_http import ProvisionHttpHandler, ProvisionSettings
from support import order_payload

INTEGRATION = "greenhouse:HWUTwvyx2wLoSUHphiWVrp28"


def context(
    handler: str, order_id: str = "O1", outputs: dict[str, Any] | None = None, effects: Any = None
) -> HandlerContext:
    return HandlerContext(
        integration_id=INTEGRATION,
        order_id=order_id,
        job_id="job",
        handler_name=handler,
        idempotency_key=step_key("dispatcher", INTEGRATION, order_id, handler),
        attempt=1,
        outputs=outputs or {},
        settings=Settings(),
        logger=logging.LoggerAdapter(logging.getLogger(f"test.{handler}"), {}),
        effects=effects if effects is not None else MemoryEffects(),
    )


_open_handlers: list[ProvisionHttpHandler] = []


@pytest.fixture(autouse=True)
def _close_handlers() -> Iterator[None]:
    yield
    while _open_handlers:
        _open_handlers.pop().close()


def provisioner(vendor: VendorAPI, token: str | None = "tok_secret") -> ProvisionHttpHandler:
    handler = ProvisionHttpHandler(
        ProvisionSettings(PROVISION_URL=vendor.url, PROVISION_TOKEN=token, PROVISION_TIMEOUT=1)
    )
    _open_handlers.append(handler)
    return handler


# -- provision_http ---------------------------------------------------------------------------


def test_provision_posts_the_order_with_integration_token_and_idempotency_key(
    vendor: VendorAPI,
) -> None:
    raw = order_payload("O1", custom_fields={"seniority": "senior"})
    ctx = context("provision_http")
    output = provisioner(vendor).handle(parse_order(raw), ctx)
    [call] = vendor.calls
    assert call.body == {**raw, "integration_id": INTEGRATION}
    assert call.authorization == "Bearer tok_secret"
    assert call.idempotency_key == ctx.idempotency_key
    assert output == {"test_url": f"https://tests.example/t/{ctx.idempotency_key}", "ok": True}


def test_each_worker_thread_posts_through_its_own_connections_and_close_closes_all(
    vendor: VendorAPI,
) -> None:
    # One client shared by a threaded worker's 50 threads cost a third of its CPU in
    # httpcore's pool; each thread keeps its own, and the worker's shutdown closes them all.
    handler = provisioner(vendor)
    transports: dict[str, Any] = {}

    def post(name: str) -> None:
        handler.handle(parse_order(order_payload(name)), context("provision_http"))
        first = handler._thread_transport
        handler.handle(parse_order(order_payload(name + "b")), context("provision_http"))
        assert handler._thread_transport is first
        transports[name] = first

    threads = [threading.Thread(target=post, args=(f"T{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(vendor.calls) == 6
    assert len({id(t) for t in transports.values()}) == 3
    assert all(len(t._pool.connections) == 1 for t in transports.values())
    handler.close()
    assert all(not t._pool.connections for t in transports.values())


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "through the client"])
def test_a_cookie_the_vendor_sets_answering_one_order_is_not_sent_with_the_next(
    vendor: VendorAPI, direct: bool
) -> None:
    # The vendor's answers are untrusted, and one order's data must not reach another's
    # request: an httpx.Client would keep the cookie in its jar and send it on. The client
    # path is the one taken with tracing on or a proxy configured.
    vendor.cookie = "session=order-O1-secret; Path=/"
    handler = provisioner(vendor)
    handler._direct = direct
    handler.handle(parse_order(order_payload("O1")), context("provision_http", "O1"))
    handler.handle(parse_order(order_payload("O2")), context("provision_http", "O2"))
    assert [call.headers.get("cookie") for call in vendor.calls] == [None, None]
    assert vendor.calls[1].headers["user-agent"].startswith("python-httpx/")


def test_provision_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx.Client honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY; the direct path must not skip it.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    proxy = VendorAPI()
    try:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/provision"))
        target = "http://vendor.invalid/provision"
        handler = ProvisionHttpHandler(ProvisionSettings(PROVISION_URL=target, PROVISION_TIMEOUT=1))
        _open_handlers.append(handler)
        handler.handle(parse_order(order_payload("O1")), context("provision_http"))
        [call] = proxy.calls
        assert call.path == target  # the proxy was asked for the vendor's URL
    finally:
        proxy.close()


def test_provision_without_a_token_sends_no_authorization(vendor: VendorAPI) -> None:
    provisioner(vendor, token=None).handle(parse_order(order_payload("O1")), context("p"))
    assert vendor.calls[0].authorization is None


@pytest.mark.parametrize("failure", [503, 500, 429, "timeout", "drop"])
def test_provision_transient_failures_are_retry_later(vendor: VendorAPI, failure: Any) -> None:
    vendor.failures = [failure]
    with pytest.raises(RetryLater, match="vendor API"):
        provisioner(vendor).handle(parse_order(order_payload("O1")), context("provision_http"))


@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_provision_other_4xx_are_permanent_with_the_vendor_message(
    vendor: VendorAPI, status: int
) -> None:
    vendor.failures = [status]
    with pytest.raises(PermanentFailure) as info:
        provisioner(vendor).handle(parse_order(order_payload("O1")), context("provision_http"))
    assert str(info.value) == f"vendor API answered HTTP {status}: vendor says no ({status})"


def test_provision_configuration_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_URL", raising=False)
    with pytest.raises(HandlerConfigError, match=r"^PROVISION_URL: not set$"):
        ProvisionHttpHandler()
    monkeypatch.setenv("PROVISION_URL", "not a url")
    with pytest.raises(HandlerConfigError, match=r"^PROVISION_URL: "):
        ProvisionHttpHandler()


def test_provision_token_never_shows_in_errors(vendor: VendorAPI) -> None:
    vendor.failures = [400]
    handler = provisioner(vendor, token="tok_very_secret")
    with pytest.raises(PermanentFailure) as info:
        handler.handle(parse_order(order_payload("O1")), context("provision_http"))
    assert "tok_very_secret" not in str(info.value)
    assert "tok_very_secret" not in repr(handler.settings)


# -- notify_email -----------------------------------------------------------------------------


def team_order(order_id: str = "O1", **candidate: Any) -> Order:
    raw = order_payload(order_id)
    raw["candidate"].update(candidate)
    raw["job"]["name"] = "Senior <Bottle> & Opener"
    raw["job"]["hiring_team"] = [
        {"remote_id": "1", "email": "Rita@Example.com", "first_name": "Rita", "last_name": None,
         "hiring_team_roles": ["RECRUITER"]},
        {"remote_id": "2", "email": "rita@example.com", "first_name": "Rita", "last_name": "again",
         "hiring_team_roles": ["HIRING_MANAGER"]},
        {"remote_id": "3", "email": "hank@example.com", "first_name": "Hank", "last_name": None,
         "hiring_team_roles": ["HIRING_MANAGER", "INTERVIEWER"]},
        {"remote_id": "4", "email": "ivy@example.com", "first_name": "Ivy", "last_name": None,
         "hiring_team_roles": ["INTERVIEWER"]},
        {"remote_id": "5", "email": "nora@example.com", "first_name": "Nora", "last_name": None,
         "hiring_team_roles": []},
        {"remote_id": "6", "email": None, "first_name": "No", "last_name": "Mail",
         "hiring_team_roles": ["RECRUITER"]},
    ]  # fmt: skip
    return parse_order(raw)


def mailer(mailbox: Mailbox, roles: str = "RECRUITER,HIRING_MANAGER") -> NotifyEmailHandler:
    return NotifyEmailHandler(
        EmailSettings(
            SMTP_URL=mailbox.url, NOTIFY_FROM="Acme Tests <tests@acme.example>", NOTIFY_ROLES=roles
        )
    )


def test_one_mail_per_distinct_eligible_address_none_to_the_others(
    mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    output = mailer(mailbox).handle(team_order(), context("notify_email"))
    assert mailbox.by_recipient() == {"rita@example.com": 1, "hank@example.com": 1}
    assert output == {"recipients": 2, "sent": 2, "refused": 0, "invalid": 0}
    assert "order O1: job.hiring_team[5].email is empty: member skipped" in caplog.text


def test_roles_are_configurable(mailbox: Mailbox) -> None:
    mailer(mailbox, roles="HIRING_MANAGER").handle(team_order(), context("notify_email"))
    assert set(mailbox.by_recipient()) == {"rita@example.com", "hank@example.com"}
    mailbox.messages.clear()
    mailer(mailbox, roles="RECRUITER").handle(team_order("O2"), context("notify_email", "O2"))
    assert set(mailbox.by_recipient()) == {"rita@example.com"}


def test_the_mail_names_candidate_job_package_link_and_order_safely(mailbox: Mailbox) -> None:
    order = team_order(first_name="Zoë <script>", last_name="O'Brien & Co")
    ctx = context(
        "notify_email", outputs={"provision_http": {"test_url": "https://t.example/x?a=1&b=2"}}
    )
    mailer(mailbox).handle(order, ctx)
    _, message = mailbox.messages[0]
    assert (
        message["Subject"]
        == "Assessment ordered for Zoë <script> O'Brien & Co: Senior <Bottle> & Opener"
    )
    assert message["From"] == "Acme Tests <tests@acme.example>"
    plain = message.get_body(("plain",)).get_content()
    html_part = message.get_body(("html",)).get_content()
    for text in (plain,):
        assert "Zoë <script> O'Brien & Co" in text
        assert "typescript_test" in text and "O1" in text
        assert "https://t.example/x?a=1&b=2" in text
    assert "Zoë &lt;script&gt; O&#x27;Brien &amp; Co" in html_part
    assert "<script>" not in html_part
    assert "Senior &lt;Bottle&gt; &amp; Opener" in html_part
    assert 'href="https://t.example/x?a=1&amp;b=2"' in html_part


def test_message_ids_are_stable_per_order_and_recipient(mailbox: Mailbox) -> None:
    mailer(mailbox).handle(team_order(), context("notify_email"))
    mailer(mailbox).handle(team_order(), context("notify_email"))  # a resend without memory
    mailer(mailbox).handle(team_order("O2"), context("notify_email", "O2"))
    ids = mailbox.message_ids()
    assert len(ids) == 4  # 2 recipients x 2 orders
    assert sorted(ids.values()) == [1, 1, 2, 2]
    assert all(mid.endswith("@acme.example>") for mid in ids)


def test_a_retry_skips_recipients_already_mailed(mailbox: Mailbox) -> None:
    effects = MemoryEffects()
    effects.record("mail:rita@example.com")
    output = mailer(mailbox).handle(team_order(), context("notify_email", effects=effects))
    assert mailbox.by_recipient() == {"hank@example.com": 1}
    assert output["sent"] == 1
    mailer(mailbox).handle(team_order(), context("notify_email", effects=effects))
    assert mailbox.by_recipient() == {"hank@example.com": 1}


def test_smtp_down_is_retry_later() -> None:
    handler = NotifyEmailHandler(
        EmailSettings(SMTP_URL="smtp://127.0.0.1:1", NOTIFY_FROM="t@acme.example", SMTP_TIMEOUT=1)
    )
    with pytest.raises(RetryLater, match="unreachable"):
        handler.handle(team_order(), context("notify_email"))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"NOTIFY_FROM": "t@acme.example"}, "SMTP_URL"),
        ({"SMTP_URL": "smtp://h:25"}, "NOTIFY_FROM"),
        ({"SMTP_URL": "http://h", "NOTIFY_FROM": "t@acme.example"}, "SMTP_URL"),
        ({"SMTP_URL": "smtp://h:25", "NOTIFY_FROM": "nobody"}, "NOTIFY_FROM"),
    ],
)
def test_email_configuration_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    for name in ("SMTP_URL", "NOTIFY_FROM", "NOTIFY_ROLES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(HandlerConfigError, match=rf"^{variable}: "):
        NotifyEmailHandler()


# -- notify_webhook ---------------------------------------------------------------------------


def test_webhook_posts_a_slack_text_with_the_link_escaped(vendor: VendorAPI) -> None:
    from dispatcher_handlers.notify_webhook import NotifyWebhookHandler, WebhookSettings

    handler = NotifyWebhookHandler(WebhookSettings(NOTIFY_WEBHOOK_URL=vendor.url))
    try:
        ctx = context("notify_webhook", outputs={"provision_http": {"test_url": "https://t/9"}})
        output = handler.handle(team_order(), ctx)
        vendor.failures = [502]
        with pytest.raises(RetryLater, match="notification webhook answered HTTP 502"):
            handler.handle(team_order(), ctx)
    finally:
        handler.close()
    assert output == {"posted": True}
    call = vendor.calls[0]
    assert call.idempotency_key == ctx.idempotency_key
    assert call.body == {
        "text": "Assessment ordered: Zoë Doe for Senior &lt;Bottle&gt; &amp; Opener "
        "(package typescript_test)\nTest link: <https://t/9>\nKombo order O1"
    }
