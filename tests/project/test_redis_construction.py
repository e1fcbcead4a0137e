"""Every Redis client of the package is made by dispatcher/store/connection.py: elsewhere a
client built by hand skips the URL forms (TLS, Sentinel), the checks of the query and the
timeouts of its kind of process (a Sentinel URL fails in ``Redis.from_url`` with "Redis URL
must specify one of the following schemes")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dispatcher"
CONNECTION = PACKAGE / "store" / "connection.py"
# The stand-ins of the tests and benchmarks import nothing of the dispatcher (docs/design.md):
# redis_server.py PINGs the server it started with a client of its own.
STAND_INS = PACKAGE / "testing"
# What builds a client or a pool from scratch: redis-py's classes, and any ``.from_url``.
_CONSTRUCTORS = frozenset({"Redis", "StrictRedis", "Sentinel", "ConnectionPool"})


def _constructions(path: Path) -> list[str]:
    """``file:line name`` of each call in ``path`` that builds a Redis client or pool."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "from_url" or name in _CONSTRUCTORS:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {ast.unparse(func)}")
    return found


def test_no_module_but_connection_py_builds_a_redis_client() -> None:
    elsewhere = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != CONNECTION and STAND_INS not in path.parents
        for hit in _constructions(path)
    ]
    assert elsewhere == [], "build Redis through dispatcher.store.connection.connect"


def test_the_scan_finds_the_constructions_of_connection_py() -> None:
    # The scan sees what it looks for: connection.py's own call.
    assert [hit for hit in _constructions(CONNECTION) if hit.endswith(" Redis.from_url")]
