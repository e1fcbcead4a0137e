"""notify_email under hostile hiring-team data (issue 12, item 2), against a real SMTP server.

Every address and name of a hiring-team member comes from the customer's ATS. Whatever they
hold, each message must have exactly one envelope recipient and one ``To:`` address, both the
member's validated address; a member with a bad address is skipped (warned, never mailed) and
never stops the members after it or fails the step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dispatcher import HandlerContext, RetryLater, Settings
from dispatcher.kombo.models import Order, parse_order
from dispatcher.testing.mailbox import Mailbox
from dispatcher.worker.steps import MemoryEffects, step_key
from dispatcher_handlers.notify_email import EmailSettings, NotifyEmailHandler, _addr_spec
from support import order_payload

INTEGRATION = "greenhouse:HOSTILE00000000000000000"
GOOD = "hank@example.com"
# What a sent message may carry: the handler's own headers and the MIME ones, nothing else.
HEADERS = {"subject", "from", "to", "message-id", "x-kombo-order-id"}
HEADERS |= {"mime-version", "content-type", "content-transfer-encoding"}


def context(order_id: str = "O1", effects: Any = None) -> HandlerContext:
    return HandlerContext(
        integration_id=INTEGRATION,
        order_id=order_id,
        job_id="job",
        handler_name="notify_email",
        idempotency_key=step_key("dispatcher", INTEGRATION, order_id, "notify_email"),
        attempt=1,
        outputs={},
        settings=Settings(),
        logger=logging.LoggerAdapter(logging.getLogger("test.notify_email"), {}),
        effects=effects if effects is not None else MemoryEffects(),
    )


def member(email: str | None, first: str | None = "Eve", last: str | None = None) -> dict[str, Any]:
    return {
        "remote_id": "m",
        "email": email,
        "first_name": first,
        "last_name": last,
        "hiring_team_roles": ["RECRUITER"],
    }


def order_with(*members: dict[str, Any], order_id: str = "O1", **fields: Any) -> Order:
    raw = order_payload(order_id, **fields)
    raw["job"]["hiring_team"] = list(members)
    return parse_order(raw)


def mailer(mailbox: Mailbox) -> NotifyEmailHandler:
    return NotifyEmailHandler(
        EmailSettings(SMTP_URL=mailbox.url, NOTIFY_FROM="Acme Tests <tests@acme.example>")
    )


def to_addresses(message: EmailMessage) -> list[str]:
    """Every address the To: header names, as a mail client would read it."""
    return [address for _, address in getaddresses([str(message["To"])]) if address]


def assert_one_recipient_each(mailbox: Mailbox) -> None:
    for rcpts, message in mailbox.messages:
        assert len(rcpts) == 1, rcpts
        assert to_addresses(message) == rcpts
        assert len(message["To"].addresses) == 1
        assert {name.lower() for name in message} <= HEADERS, message.keys()


ATTACKS = {
    "comma list": "evil@x.com, other@y.com",
    "display name and list": '"Boss" <evil@x.com>, x@y.com',
    "group": "undisclosed: evil@x.com, other@y.com;",
    "200 addresses": ", ".join(f"evil{i}@x.com" for i in range(200)),
    "not an address": "not-an-email",
    "angle brackets": "<evil@x.com>",
    "trailing semicolon": "evil@x.com;",
    "CRLF header": "evil@x.com\r\nBcc: other@y.com",
    "LF second address": "evil@x.com\nother@y.com",
    "tab": "\t",
    "comment": "evil(comment)@x.com",
    "quoted local part": '"evil,other"@x.com',
    "route": "@relay.example:evil@x.com",
    "no domain": "evil@",
    "domain literal": "evil@[127.0.0.1]",
    "too long": "e" * 60 + "@" + "x" * 250 + ".com",
    "long local part": "e" * 65 + "@x.com",
    "unicode line separator": "evil@x.com\u2028other@y.com",
    "NUL": "evil\x00@x.com",
}


@pytest.mark.parametrize("email", list(ATTACKS.values()), ids=list(ATTACKS))
def test_a_hostile_email_is_skipped_and_the_members_after_it_are_mailed(
    mailbox: Mailbox, caplog: pytest.LogCaptureFixture, email: str
) -> None:
    caplog.set_level(logging.DEBUG)
    order = order_with(member(email), member(GOOD, "Hank"))
    output = mailer(mailbox).handle(order, context())

    assert [rcpts for rcpts, _ in mailbox.messages] == [[GOOD]]
    assert_one_recipient_each(mailbox)
    assert output == {"recipients": 1, "sent": 1, "refused": 0, "invalid": 1}
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(
        "order O1: job.hiring_team[0].email is not one email address ("
    )
    assert warning.getMessage().endswith("): member skipped")
    # The address is contact data (and the attack): only at DEBUG, escaped to one line.
    for record in caplog.records:
        if record.levelno > logging.DEBUG:
            assert email not in record.getMessage()
            assert "evil" not in record.getMessage()
    assert any(repr(email) in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    info = [r.getMessage() for r in caplog.records if r.getMessage().startswith("notified")]
    assert info == [
        "notified 1 of 1 recipients (0 earlier, 0 refused, 0 deferred); "
        "1 members skipped for an invalid email"
    ]


@pytest.mark.parametrize("email", ["   ", "", None])
def test_an_empty_or_whitespace_email_is_skipped_without_crashing(
    mailbox: Mailbox, caplog: pytest.LogCaptureFixture, email: str | None
) -> None:
    caplog.set_level(logging.INFO)
    output = mailer(mailbox).handle(order_with(member(email), member(GOOD)), context())
    assert [rcpts for rcpts, _ in mailbox.messages] == [[GOOD]]
    assert output == {"recipients": 1, "sent": 1, "refused": 0, "invalid": 0}
    assert "order O1: job.hiring_team[0].email is empty: member skipped" in caplog.text


def test_surrounding_spaces_and_a_unicode_domain_still_reach_the_member(mailbox: Mailbox) -> None:
    order = order_with(member("  Rita@Example.com "), member("zoe@bücher.example"))
    output = mailer(mailbox).handle(order, context())
    assert sorted(rcpts for rcpts, _ in mailbox.messages) == [
        ["Rita@Example.com"],
        ["zoe@xn--bcher-kva.example"],
    ]
    assert_one_recipient_each(mailbox)
    assert output["invalid"] == 0


NAME_ATTACKS = {
    "CRLF Bcc": ("Rita\r\nBcc: evil@x.com", None),
    "LF in last name": ("Rita", "Roe\nTo: evil@x.com"),
    "comma address": ("Rita, evil@x.com", None),
    "angle address": ("Rita <evil@x.com>", None),
    "group": ("undisclosed: evil@x.com;", None),
    "quotes and backslash": ('Rita" <evil@x.com>, "x', "\\"),
    "encoded word": ("=?utf-8?q?evil=40x.com=2C_?=", None),
    "line separator": ("Rita\u2028Bcc: evil@x.com", None),
    "lone surrogate": ("Rita\ud800", None),
}


@pytest.mark.parametrize(("first", "last"), list(NAME_ATTACKS.values()), ids=list(NAME_ATTACKS))
def test_a_hostile_member_name_adds_no_recipient_and_no_header(
    mailbox: Mailbox, first: str, last: str | None
) -> None:
    order = order_with(member("rita@example.com", first, last), member(GOOD, "Hank"))
    output = mailer(mailbox).handle(order, context())

    assert sorted(rcpts for rcpts, _ in mailbox.messages) == [[GOOD], ["rita@example.com"]]
    assert_one_recipient_each(mailbox)
    assert output == {"recipients": 2, "sent": 2, "refused": 0, "invalid": 0}
    rita = next(m for rcpts, m in mailbox.messages if rcpts == ["rita@example.com"])
    [address] = rita["To"].addresses
    assert address.addr_spec == "rita@example.com"
    assert "\n" not in address.display_name and "\r" not in address.display_name


def test_hostile_candidate_job_and_order_id_inject_no_header(mailbox: Mailbox) -> None:
    order = order_with(
        member(GOOD),
        # An order id with CR/LF is refused by the models before any handler sees it; one
        # with a header-like tail is not.
        order_id="O1 Bcc: evil@x.com",
        candidate={"remote_id": "c", "email": "c@x.com", "first_name": "Zoë\r\nBcc: evil@x.com"},
        job={"name": "Opener\nCc: evil@x.com", "hiring_team": []},
    )
    output = mailer(mailbox).handle(order, context())

    assert [rcpts for rcpts, _ in mailbox.messages] == [[GOOD]]
    assert_one_recipient_each(mailbox)
    assert output["sent"] == 1
    [(_, message)] = mailbox.messages
    assert (
        str(message["Subject"])
        == "Assessment ordered for Zoë Bcc: evil@x.com: Opener Cc: evil@x.com"
    )
    assert str(message["X-Kombo-Order-Id"]) == "O1 Bcc: evil@x.com"


def test_a_deferred_member_does_not_hold_back_the_members_after_it(mailbox: Mailbox) -> None:
    mailbox.defer.add("rita@example.com")
    effects = MemoryEffects()
    order = order_with(member("rita@example.com"), member(GOOD))
    with pytest.raises(RetryLater) as info:
        mailer(mailbox).handle(order, context(effects=effects))
    assert [rcpts for rcpts, _ in mailbox.messages] == [[GOOD]]  # not held back by rita
    assert str(info.value) == "SMTP server deferred 1 recipient(s) (450)"

    mailbox.defer.clear()
    output = mailer(mailbox).handle(order, context(effects=effects))
    assert [rcpts for rcpts, _ in mailbox.messages] == [[GOOD], ["rita@example.com"]]
    assert output == {"recipients": 2, "sent": 1, "refused": 0, "invalid": 0}


# -- properties ---------------------------------------------------------------------------------

# Text rich in what breaks addresses and headers: separators, specials, line breaks, controls,
# unicode (letters, line separators, a lone surrogate).
_hostile_chars = st.sampled_from(
    [
        *"aZ09.@,;:<>\"'()[]\\ \t\r\n\x00\x0b\x1f\x7f=?_+-",
        "\u2028",
        "\u2029",
        "\x85",
        "é",
        "ü",
        "İ",
        "\u200d",
        "\u202e",
        "\ud800",
        "名",
    ]
)
hostile_text = st.text(_hostile_chars, max_size=40) | st.text(max_size=40)
emails = (
    st.emails()
    | hostile_text
    | st.builds(lambda a, b, sep: f"{a}{sep}{b}", st.emails(), st.emails(), hostile_text)
    | st.builds(lambda name, a: f'"{name}" <{a}>', hostile_text, st.emails())
)


@given(st.text())
@example("0@[")  # the 3.11 parser raised AttributeError on it: a crash, not a refusal
@example("local@")
@settings(max_examples=500)
def test_a_validated_address_is_one_plain_ascii_addr_spec(raw: str) -> None:
    try:
        address = _addr_spec(raw)
    except ValueError:
        return
    assert address.isascii() and address.isprintable()
    assert getaddresses([address]) == [("", address)]
    assert not set(address) & set(' ,;:<>"()[]\\')
    assert len(address) <= 254


@given(st.emails())
def test_every_ordinary_address_is_accepted(address: str) -> None:
    assert _addr_spec(address) == address


@pytest.fixture(scope="module")
def shared_mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    yield box
    box.close()


@given(
    team=st.lists(
        st.tuples(st.none() | hostile_text, st.none() | hostile_text, st.none() | emails),
        min_size=1,
        max_size=4,
    )
)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_message_has_one_recipient_a_validated_member_address(
    shared_mailbox: Mailbox, team: list[tuple[str | None, str | None, str | None]]
) -> None:
    shared_mailbox.messages.clear()
    members = [member(email, first, last) for first, last, email in team] + [member(GOOD)]
    valid: set[str] = set()
    for _, _, email in team:
        with contextlib.suppress(ValueError):
            valid.add(_addr_spec((email or "").strip(" ")).lower())
    output = mailer(shared_mailbox).handle(order_with(*members), context())

    assert_one_recipient_each(shared_mailbox)
    received = [rcpts[0].lower() for rcpts, _ in shared_mailbox.messages]
    assert sorted(received) == sorted(valid | {GOOD})  # each valid address once, no other
    assert output["sent"] == len(received)
