"""Writing an order's result back to Kombo: the typed body.

:class:`AssessmentResult` is the body of ``PUT /assessment/orders/{id}/result``, validated
before anything is sent (Kombo's rules: ``result_url`` required, ``completed_at`` required for
COMPLETED and CANCELLED and here defaulting to now, at most 5 attachments, each with base64
``data`` and a ``content_type`` or a ``data_url``). What the dispatcher keeps in Redis of a
result is in :mod:`dispatcher.store` (the outbox, :mod:`dispatcher.store.results`; the
finished-order record, :mod:`dispatcher.store.result_record`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import mimetypes
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from dispatcher._text import error_message, first_problem, is_http_url
from dispatcher.kombo.models import id_problem, kombo_time

__all__ = [
    "MAX_ATTACHMENTS",
    "AssessmentResult",
    "Attachment",
    "InvalidResultError",
    "ResultStatus",
    "SubResultAttribute",
    "SubResultScore",
    "TextAttribute",
    "attachment_from_file",
    "build_result",
    "check_integration_id",
]

MAX_ATTACHMENTS = 5
# How deep a result may nest (remote_fields are flat per-ATS values in practice): deeper
# bodies are refused before they reach the store, Kombo's JSON parser or a recursion limit.
MAX_DEPTH = 32
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# What a URL Kombo is given may not contain: controls (CR/LF forge headers), spaces.
_URL_BAD_CHAR = re.compile("[\x00-\x20\x7f-\x9f]")


class ResultStatus(StrEnum):
    """What a result can set an order to (OPEN: a partial result, the order stays open)."""

    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    OPEN = "OPEN"


class InvalidResultError(ValueError):
    """A result (or one of its parts) fails validation; the message names the field."""

    def __init__(self, field: str, problem: str, *, others: Sequence[tuple[str, str]] = ()) -> None:
        self.field = field
        self.problem = problem
        # Every other (field, problem) of the same result, so that a caller can name them
        # all (``dispatcher result`` with two bad options says both).
        self.others = list(others)
        super().__init__(f"{field}: {problem}")

    @property
    def problems(self) -> list[tuple[str, str]]:
        """Every (field, problem), the first one first, each field once."""
        seen: dict[str, str] = {}
        first = self.problem.removesuffix(f" (and {len(self.others)} more)")
        for field, problem in [(self.field, first), *self.others]:
            seen.setdefault(field, problem)
        return list(seen.items())


def _http_url(value: str) -> str:
    if not is_http_url(value):
        raise ValueError("must be an http(s) URL")
    bad = _URL_BAD_CHAR.search(value)
    if bad is not None:
        raise ValueError(
            f"contains a control character or space (U+{ord(bad.group()):04X}) at position "
            f"{bad.start()}"
        )
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if "@" in parts.netloc:
        raise ValueError("must not carry user info (user:password@)")
    if not host:
        raise ValueError("has no host")
    return value


def _unsendable(value: Any, field: str, depth: int = 0) -> tuple[str, str] | None:
    """Where ``value`` (decoded JSON) holds what cannot be sent or stored: nesting deeper than
    MAX_DEPTH, or a lone surrogate (UTF-8 cannot encode it) in a string or a key."""
    if depth > MAX_DEPTH:
        return field, f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        bad = _LONE_SURROGATE.search(value)
        if bad is not None:
            return field, (
                f"contains a lone surrogate (U+{ord(bad.group()):04X}) at position {bad.start()}"
            )
        return None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = _key_name(key)
            if isinstance(key, str) and _LONE_SURROGATE.search(key):
                return _join(field, name), "its name contains a lone surrogate"
            items.append((_join(field, name), item))
    elif isinstance(value, list):
        items = [(f"{field}[{n}]", item) for n, item in enumerate(value)]
    for where, item in items:
        found = _unsendable(item, where, depth + 1)
        if found is not None:
            return found
    return None


def _key_name(key: Any) -> str:
    # A client's key, named in a one-line answer: plain names as they are, others quoted and
    # escaped (ASCII, no controls), cut short.
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_.\-]{1,40}", text):
        return text
    return json.dumps(text[:40])


def _join(field: str, name: str) -> str:
    # Only the first levels are named: past them, the path would be as long as the nesting.
    if field.count(".") + field.count("[") >= 3:
        return field if field.endswith("…") else field + "…"
    return f"{field}.{name}" if field else name


def _strict_time(value: Any) -> Any:
    # A number is not a time here: pydantic would read 0 as 1970 (silent coercion).
    if value is not None and not isinstance(value, (str, datetime)):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


_NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    # A field Kombo does not know is a typo here, not schema drift: refuse it.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class TextAttribute(_Strict):
    """A labelled text shown with the result."""

    type: Literal["TEXT"] = "TEXT"
    label: _NonEmpty
    value: str


# Numbers stay numbers: "87" and true are refused, not coerced (Kombo would get 87.0, 1.0).
_Number = Annotated[float, Field(strict=True)]


class SubResultScore(_Strict):
    value: _Number
    max: _Number

    @field_validator("value", "max")
    @classmethod
    def _finite(cls, value: float) -> float:
        _finite(value)
        return value


class SubResultAttribute(_Strict):
    """A scored part of the assessment."""

    type: Literal["SUB_RESULT"] = "SUB_RESULT"
    id: _NonEmpty
    label: _NonEmpty
    score: SubResultScore
    status: Literal["COMPLETED", "CANCELLED"]


Attribute = Annotated[TextAttribute | SubResultAttribute, Field(discriminator="type")]


class Attachment(_Strict):
    """A file shown with the result: inline (``data``, base64, with ``content_type``) or by
    reference (``data_url``)."""

    name: _NonEmpty
    content_type: str | None = None
    data: str | None = None
    data_url: str | None = None

    @field_validator("data")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("is not valid base64") from None
        return value

    @field_validator("data_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value) if value is not None else None

    @model_validator(mode="after")
    def _one_source(self) -> Attachment:
        if (self.data is None) == (self.data_url is None):
            raise ValueError("give exactly one of data (base64) and data_url")
        if self.data is not None and not self.content_type:
            raise ValueError("content_type is required with data")
        return self


class AssessmentResult(_Strict):
    """The body of ``PUT /assessment/orders/{id}/result``, checked against Kombo's rules.

    ``completed_at`` defaults to now for COMPLETED and CANCELLED (Kombo requires it then).
    """

    status: ResultStatus
    result_url: _NonEmpty
    completed_at: datetime | None = None
    score: _Number | None = None
    max_score: _Number | None = None
    attributes: list[Attribute] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)
    remote_fields: dict[str, Any] | None = None

    @field_validator("result_url")
    @classmethod
    def _result_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("score", "max_score")
    @classmethod
    def _scores(cls, value: float | None) -> float | None:
        return _finite(value)

    @field_validator("completed_at", mode="before")
    @classmethod
    def _time_string(cls, value: Any) -> Any:
        return _strict_time(value)

    @field_validator("completed_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A naive time is taken as UTC: Kombo stores instants.
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_completed_at(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("completed_at") is None
            and data.get("status") in (ResultStatus.COMPLETED, ResultStatus.CANCELLED)
        ):
            data = {**data, "completed_at": datetime.now(UTC)}
        return data

    def to_body(self) -> dict[str, Any]:
        """The JSON body Kombo expects (unset optional fields left out)."""
        body = self.model_dump(mode="json", exclude_none=True)
        if self.completed_at is not None:
            body["completed_at"] = kombo_time(self.completed_at)
        if not self.attributes:
            body.pop("attributes", None)
        if not self.attachments:
            body.pop("attachments", None)
        return body


def check_integration_id(value: str) -> str:
    """``value`` if it can name an integration in a write (it becomes the X-Integration-Id
    header: printable ASCII only), else InvalidResultError naming ``integration_id``."""
    problem = id_problem(value)
    if problem is None:
        bad = re.search("[^\x21-\x7e]", value)
        if bad is not None:
            problem = (
                f"contains U+{ord(bad.group()):04X} at position {bad.start()}: it is sent as "
                "the X-Integration-Id header, which takes printable ASCII only"
            )
    if problem is not None:
        raise InvalidResultError("integration_id", problem)
    return value


def build_result(**fields: Any) -> AssessmentResult:
    """Validate a result, raising InvalidResultError naming the first bad field (also what
    could not be sent at all: nesting deeper than MAX_DEPTH, lone surrogates)."""
    for name, value in fields.items():
        if _LONE_SURROGATE.search(name):
            raise InvalidResultError(_key_name(name), "its name contains a lone surrogate")
        found = _unsendable(value, name, 1)
        if found is not None:
            raise InvalidResultError(*found)
    try:
        return AssessmentResult.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def attachment_from_file(path: str | Path) -> Attachment:
    """An inline attachment of a file: its name, guessed content type and base64 data.

    Raises InvalidResultError naming the file when it cannot be read.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidResultError(f"attachment {path}", exc.strerror or str(exc)) from None
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Attachment(
        name=path.name, content_type=content_type, data=base64.b64encode(data).decode("ascii")
    )


def _invalid(exc: ValidationError) -> InvalidResultError:
    others = [
        (_result_field(error["loc"]) or "result", error_message(error))
        for error in exc.errors()[1:]
    ]
    return InvalidResultError(
        *first_problem(exc, field=_result_field, default="result"), others=others
    )


def _result_field(location: Sequence[int | str]) -> str:
    """``attributes[0].label``: indexes in brackets, as the result's JSON is written."""
    # Drop the tag pydantic adds for a discriminated union member (attributes.0.TEXT.label).
    parts = [str(part) for part in location if part not in ("TEXT", "SUB_RESULT")]
    field = ""
    for part in parts:
        field += f"[{part}]" if part.isdigit() else (f".{part}" if field else part)
    return field
