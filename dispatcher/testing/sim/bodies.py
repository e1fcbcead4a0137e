"""What the simulator accepts in a request body: a result written back, a package list.

A result is checked by the dispatcher's own model of Kombo's rules
(:class:`dispatcher.kombo.results.AssessmentResult`, through ``build_result``), not by a second
copy of them: the client and its stand-in for Kombo cannot drift apart. A refused result is
answered as Kombo does, 400 ``PLATFORM.INPUT_INVALID``, with the model's field and problem.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from dispatcher.kombo.packages import PACKAGE_FIELDS, PackageType
from dispatcher.kombo.results import InvalidResultError, ResultStatus, build_result
from dispatcher.testing.sim.data import JSON
from dispatcher.testing.sim.envelope import invalid

__all__ = ["json_body", "validate_packages", "validate_result"]

_PACKAGE_TYPES = tuple(PackageType)
# The statuses after which Kombo requires completed_at.
_CLOSING = (ResultStatus.COMPLETED, ResultStatus.CANCELLED)


def json_body(request: httpx.Request) -> Any:
    try:
        return json.loads(request.content)
    except (ValueError, UnicodeDecodeError):
        raise invalid("request body is not valid JSON") from None


def validate_result(body: Any) -> list[JSON]:
    """Validate a result write-back body; return the warnings for the answer."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    try:
        build_result(**body)
    except InvalidResultError as exc:
        raise invalid(str(exc)) from None
    # Two rules are Kombo's alone: the model fills a missing completed_at in with now before
    # it sends (so Kombo's refusal never reaches the client), and Kombo takes a score without
    # its max_score, with a warning.
    if body.get("completed_at") is None and body["status"] in _CLOSING:
        raise invalid(f"completed_at is required when status is {body['status']}")
    if body.get("score") is not None and body.get("max_score") is None:
        return [{"message": "score ignored: the ATS can only show a score with its max_score"}]
    return []


def validate_packages(body: Any) -> list[JSON]:
    if not isinstance(body, dict) or not isinstance(body.get("packages"), list):
        raise invalid("packages is required and must be a list")
    packages: list[JSON] = []
    seen: set[str] = set()
    for i, package in enumerate(body["packages"]):
        where = f"packages[{i}]."
        if not isinstance(package, dict):
            raise invalid(f"packages[{i}] must be an object")
        for field in PACKAGE_FIELDS:
            if not isinstance(package.get(field), str):
                raise invalid(f"{where}{field} is required and must be a string")
        if package["type"] not in _PACKAGE_TYPES:
            raise invalid(
                f"{where}type must be one of {', '.join(_PACKAGE_TYPES)}, got {package['type']!r}"
            )
        if package["id"] in seen:
            raise invalid(f"{where}id {package['id']!r} appears twice")
        seen.add(package["id"])
        packages.append({k: package[k] for k in PACKAGE_FIELDS})
    return packages
