"""The vendor's assessment packages: the typed list Kombo publishes in every customer's ATS.

``PUT /assessment/packages`` replaces the whole list of an integration: packages left out are
marked deleted. :func:`load_packages` reads the list from a JSON or TOML file and validates it;
:func:`diff_packages` says what a replacement adds, changes and marks deleted, so an operator
sees it before it happens.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dispatcher._text import validation_line

__all__ = [
    "InvalidPackagesError",
    "Package",
    "PackageType",
    "PackagesDiff",
    "diff_packages",
    "load_packages",
    "parse_packages",
]

PACKAGE_FIELDS = ("id", "type", "name", "description")


class PackageType(StrEnum):
    """Kombo's package types."""

    BEHAVIORAL = "BEHAVIORAL"
    VIDEO_INTERVIEW = "VIDEO_INTERVIEW"
    SKILLS_TEST = "SKILLS_TEST"
    BACKGROUND_CHECK = "BACKGROUND_CHECK"
    REFERENCE_CHECK = "REFERENCE_CHECK"


def _known_type(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return PackageType(value)
    except ValueError:
        return value


class Package(BaseModel):
    """One package: every field required.

    What we send is strict (:func:`load_packages`: ``type`` one of :class:`PackageType`).
    What Kombo lists may be laxer: its schema allows ``type: null`` and its SDK takes types
    added after this release, so a listed package's ``type`` may be ``None`` or other text
    (``parse_packages(..., listed=True)``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1)]
    # A known type is a PackageType (a str); anything else stays as Kombo sent it.
    type: Annotated[str | None, AfterValidator(_known_type)]
    name: Annotated[str, Field(min_length=1)]
    description: str


class InvalidPackagesError(ValueError):
    """A package list fails validation; the message names the package and the field."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


def parse_packages(raw: Any, *, source: str = "packages", listed: bool = False) -> list[Package]:
    """Validate a list of packages (or ``{"packages": [...]}``); ids must be unique.

    ``listed``: the list is Kombo's answer, whose ``type`` may be null or a type unknown
    here; otherwise (a list to send) ``type`` must be one of :class:`PackageType`.
    Raises InvalidPackagesError naming ``source``, the package and the field.
    """
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"packages"})
        if unknown:
            raise InvalidPackagesError(source, f"unknown top-level key {unknown[0]!r}")
        raw = raw.get("packages")
    if not isinstance(raw, list):
        raise InvalidPackagesError(source, "expected a list of packages under `packages`")
    packages: list[Package] = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        where = f"{source}: packages[{position}]"
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            where += f" (id {item['id']})"
        try:
            package = Package.model_validate(item)
        except ValidationError as exc:
            line = validation_line(exc, "field ", default="(package)")
            raise InvalidPackagesError(where, line) from None
        if not listed and not isinstance(package.type, PackageType):
            problem = f"must be one of {', '.join(PackageType)}, got {package.type!r}"
            raise InvalidPackagesError(where, f"field type: {problem}")
        if package.id in seen:
            raise InvalidPackagesError(where, f"id {package.id!r} appears twice")
        seen.add(package.id)
        packages.append(package)
    return packages


def load_packages(path: str | Path) -> list[Package]:
    """Read and validate a package file: JSON, or TOML (``.toml``, ``[[packages]]`` tables)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidPackagesError(str(path), f"cannot read: {problem}") from None
    try:
        raw: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InvalidPackagesError(str(path), f"not valid {kind}: {exc}") from None
    return parse_packages(raw, source=str(path))


@dataclass(frozen=True, slots=True)
class PackagesDiff:
    """What replacing ``current`` with ``new`` does."""

    added: list[Package] = field(default_factory=list)
    changed: list[tuple[Package, Package]] = field(default_factory=list)
    deleted: list[Package] = field(default_factory=list)
    unchanged: list[Package] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the replacement changes nothing."""
        return not (self.added or self.changed or self.deleted)

    def lines(self) -> list[str]:
        """One line per package added (+), changed (~) or marked deleted (-)."""
        out = [f"  + {p.id} ({p.type}): {p.name}" for p in self.added]
        for old, new in self.changed:
            before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
            fields = ", ".join(
                f"{name} {before[name]!r} -> {after[name]!r}"
                for name in PACKAGE_FIELDS
                if before[name] != after[name]
            )
            out.append(f"  ~ {new.id}: {fields}")
        out += [f"  - {p.id} ({p.type}): {p.name}  [marked deleted]" for p in self.deleted]
        return out


def diff_packages(current: Sequence[Package], new: Sequence[Package]) -> PackagesDiff:
    """Compare Kombo's current list with the one about to replace it, by package id."""
    before = {package.id: package for package in current}
    after = {package.id: package for package in new}
    diff = PackagesDiff()
    for package in new:
        old = before.get(package.id)
        if old is None:
            diff.added.append(package)
        elif old != package:
            diff.changed.append((old, package))
        else:
            diff.unchanged.append(package)
    diff.deleted.extend(package for package in current if package.id not in after)
    return diff
