"""The shared helpers each have one copy; these pin what their callers rely on."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, Field, ValidationError

from dispatcher._text import as_float, as_str, is_http_url, validation_line
from dispatcher.kombo.models import kombo_time
from dispatcher.logs import escape_controls


def test_as_str_and_as_float_read_redis_replies() -> None:
    assert as_str(b"abc") == as_str("abc") == "abc"
    assert as_float(b"1.5") == as_float("1.5") == 1.5
    assert as_float(None) is as_float(b"") is as_float("x") is as_float([1]) is None


def test_kombo_time_is_utc_with_milliseconds_and_a_naive_time_is_utc() -> None:
    aware = datetime(2024, 5, 1, 14, 0, 3, 250_999, tzinfo=timezone(timedelta(hours=2)))
    assert kombo_time(aware) == "2024-05-01T12:00:03.250Z"
    assert kombo_time(datetime(2024, 5, 1, 12, 0, 3, 250_999)) == "2024-05-01T12:00:03.250Z"
    assert kombo_time(datetime(2024, 5, 1, 12, tzinfo=UTC)) == "2024-05-01T12:00:00.000Z"


def test_is_http_url() -> None:
    assert is_http_url("https://a.example") and is_http_url("http://a")
    assert not is_http_url("ftp://a.example") and not is_http_url("a.example")


class _Model(BaseModel):
    name: str
    size: int = Field(gt=0)
    tags: list[int] = []


def test_validation_line_names_the_first_field_and_counts_the_rest() -> None:
    with pytest.raises(ValidationError) as one:
        _Model.model_validate({"name": "a", "tags": [1]})
    assert validation_line(one.value, "field ") == "field size: Field required"
    with pytest.raises(ValidationError) as two:
        _Model.model_validate({"size": 0, "tags": ["x"]})
    assert validation_line(two.value) == "name: Field required (and 2 more)"


@pytest.mark.parametrize(
    "char", ["\n", "\r", "\x1b", "\x85", "\u2028", "\u202e", "\u2066", "\u200b", "\ud800"]
)
def test_escape_controls_leaves_one_printable_line(char: str) -> None:
    escaped = escape_controls(f"a{char}b")
    assert escaped.isprintable() and escaped.startswith("a\\") and escaped.endswith("b")


def test_escape_controls_keeps_printable_text_and_names_the_usual_escapes() -> None:
    assert (
        escape_controls("Zo\u00eb Doe \u2013 ok \\ \U0001f600")
        == "Zo\u00eb Doe \u2013 ok \\ \U0001f600"
    )
    assert escape_controls("a\nb\tc\x1bd\u2028") == "a\\nb\\tc\\x1bd\\u2028"
    assert escape_controls("\U000e0001") == "\\U000e0001"


def test_the_package_and_its_stand_ins_import_without_aiosmtpd() -> None:
    # aiosmtpd is in the demo and test extras only: the mailbox imports it when it starts.
    code = (
        "import sys; sys.modules['aiosmtpd'] = None\n"
        "import dispatcher, dispatcher.demo, dispatcher.testing.mailbox\n"
        "import dispatcher.testing.vendor, dispatcher.testing.redis_server\n"
        "from dispatcher.testing.mailbox import Mailbox\n"
        "try:\n    Mailbox()\nexcept ImportError:\n    print('lazy')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lazy"
