"""The import graph of ``dispatcher`` and ``dispatcher_handlers`` goes one way (issue 24).

The graph is read from the sources with :mod:`ast`, not by importing them: every ``import``
and ``from ... import`` statement, at module level (``if TYPE_CHECKING:`` blocks included:
a type is a dependency too) and inside functions (an import moved into a function to dodge
a cycle is still an arrow), with relative imports resolved and ``from pkg import name``
pointing at ``pkg.name`` when that is a module, at ``pkg`` otherwise. Importing
``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too; those implicit arrows are not
counted, or every module would sit in a cycle with the façade ``dispatcher/__init__.py``.

The rules:

* no cycle between files (a strongly connected component of more than one module);
* no two folders importing each other. The folders are the subpackages of ``dispatcher``
  (``web/console/`` counts as ``web/``) and ``dispatcher_handlers``; each top-level module of
  ``dispatcher`` (``settings.py``, ``handler.py``, ``logs.py``, ``_text.py``, ``demo.py``,
  the façade ``__init__.py``...) counts as a folder of its own, not all of them as one
  "root". They are not one floor: ``_text.py`` and ``logs.py`` are the ground every
  subpackage stands on, ``demo.py``, ``__main__.py`` and the façade the roof over them all,
  so one "root" would tie with every subpackage by construction. One at a time, none may
  import a subpackage that imports it back (``settings.py`` imports nothing from ``store/``,
  which reads the settings);
* the Kombo boundary ``dispatcher/kombo/`` speaks HTTP and models, never Redis: no
  ``redis``, ``rq`` or ``dispatcher.store`` import there;
* an import of ours inside a function says why in a comment (an optional extra, a stand-in
  only one command loads): it is never there to hide a cycle, which the first rule would
  find anyway.

``python -m tests.project.test_import_graph [SOURCE_ROOT]`` prints the graph's figures for
the checkout at SOURCE_ROOT (this one by default), so that a change can be measured before
and after: files (modules), arrows (distinct module -> module imports), floors (modules on
the longest import path once each cycle is folded into one node), cycles (and their sizes)
and the largest module in lines.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where each package's sources live: ./handlers imports as dispatcher_handlers (pyproject.toml).
PACKAGES = {"dispatcher": "dispatcher", "dispatcher_handlers": "handlers"}
FACADE = "dispatcher"


@dataclass(frozen=True)
class Arrow:
    """One import statement of ``source`` that names ``target`` (both module names)."""

    source: str
    target: str
    line: int
    in_function: bool

    def where(self, files: dict[str, Path], root: Path) -> str:
        path = files[self.source].relative_to(root)
        return f"{path}:{self.line} imports {self.target}"


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages, by its import name."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return name in files and files[name].name == "__init__.py"


def _known(name: str, files: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` (or a prefix of it) names, if any."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in files:
            return candidate
        parts.pop()
    return None


def _inside_function(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    def walk(
        node: ast.AST, in_function: bool
    ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            yield from walk(child, nested)

    return walk(tree, False)


def imports_of(name: str, files: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """(imported module name, line, inside a function) for every name an import statement
    of module ``name`` brings in, ours or not."""
    tree = ast.parse(files[name].read_text(), str(files[name]))
    package = name if _is_package(name, files) else name.rpartition(".")[0]
    for node, in_function in _inside_function(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, in_function
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base]) if base else ".".join(anchor)
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            yield (submodule if submodule in files else base), node.lineno, in_function


def arrows(root: Path = ROOT) -> tuple[dict[str, Path], list[Arrow]]:
    """The modules and every import statement between two of them (self-imports left out)."""
    files = modules(root)
    found: dict[tuple[str, str, int], Arrow] = {}
    for source in files:
        for imported, line, in_function in imports_of(source, files):
            target = _known(imported, files)
            if target is not None and target != source:
                found.setdefault((source, target, line), Arrow(source, target, line, in_function))
    return files, list(found.values())


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``, each sorted (iterative: no
    recursion limit to meet)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def graph_of(files: dict[str, Path], found: list[Arrow]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in files}
    for arrow in found:
        graph[arrow.source].add(arrow.target)
    return graph


def cycle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle inside a strongly connected component, as the modules in import order
    (the first again at the end)."""
    members = set(component)
    start = component[0]
    # Breadth-first from start back to start, inside the component: the shortest cycle.
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{component} is not a cycle")


def folder(name: str, files: dict[str, Path]) -> str:
    """Where a module lives for the one-way rule between folders (see the docstring): its
    subpackage, or the file itself for a top-level module."""
    parts = name.split(".")
    package = PACKAGES[parts[0]]
    if len(parts) == 1:
        return f"{package}/__init__.py"
    if parts[0] == FACADE and len(parts) == 2 and not _is_package(name, files):
        return f"{package}/{parts[1]}.py"
    if parts[0] != FACADE:
        return f"{package}/"
    return f"{package}/{parts[1]}/"


def folder_ties(files: dict[str, Path], found: list[Arrow]) -> dict[tuple[str, str], list[Arrow]]:
    """Pairs of folders that import each other, with the arrows each way."""
    between: dict[tuple[str, str], list[Arrow]] = {}
    for arrow in found:
        pair = (folder(arrow.source, files), folder(arrow.target, files))
        if pair[0] != pair[1]:
            between.setdefault(pair, []).append(arrow)
    return {
        (a, b): between[(a, b)] + between[(b, a)]
        for (a, b) in sorted(between)
        if a < b and (b, a) in between
    }


def floors(graph: dict[str, set[str]], components: list[list[str]]) -> int:
    """The longest path (in modules) of the graph with each cycle folded into one node."""
    home = {member: i for i, component in enumerate(components) for member in component}
    # Tarjan's algorithm emits a component after every component it imports.
    height: list[int] = []
    for component in components:
        below = {home[t] for m in component for t in graph[m]} - {home[component[0]]}
        height.append(1 + max((height[i] for i in below), default=0))
    return max(height, default=0)


def figures(root: Path = ROOT) -> dict[str, object]:
    files, found = arrows(root)
    graph = graph_of(files, found)
    components = strongly_connected(graph)
    cycles = sorted((c for c in components if len(c) > 1), key=len, reverse=True)
    lines = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    largest = max(lines, key=lambda name: lines[name])
    return {
        "files": len(files),
        "arrows": sum(len(targets) for targets in graph.values()),
        "floors": floors(graph, components),
        "cycles": len(cycles),
        "cycle sizes": [len(c) for c in cycles],
        "largest module": f"{files[largest].relative_to(root)} ({lines[largest]} lines)",
    }


def test_no_import_cycle_between_files() -> None:
    files, found = arrows()
    graph = graph_of(files, found)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    shown = [" -> ".join(cycle_through(c, graph)) for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def test_no_two_folders_import_each_other() -> None:
    files, found = arrows()
    ties = folder_ties(files, found)
    lines = []
    for (a, b), both in ties.items():
        there = next(arrow for arrow in both if folder(arrow.source, files) == a)
        back = next(arrow for arrow in both if folder(arrow.source, files) == b)
        lines.append(
            f"{a} <-> {b}: {there.where(files, ROOT)}; {back.where(files, ROOT)}"
            f" ({len(both)} imports in all)"
        )
    assert not ties, "folders importing each other:\n" + "\n".join(lines)


def test_the_kombo_boundary_holds_no_redis_code() -> None:
    files = modules()
    offending = [  # one line per statement and module (a statement may name several)
        f"{files[name].relative_to(ROOT)}:{line} imports {imported}"
        for name in files
        if name.startswith("dispatcher.kombo.") or name == "dispatcher.kombo"
        for imported, line, _ in imports_of(name, files)
        if imported.split(".")[0] in {"redis", "rq"} or imported.startswith("dispatcher.store")
    ]
    assert not offending, "Redis code in dispatcher/kombo/:\n" + "\n".join(dict.fromkeys(offending))


def test_every_import_of_ours_inside_a_function_says_why() -> None:
    """An import moved into a function is an arrow all the same (it counts above); one that
    is there for another reason (an optional extra, a stand-in only one command loads) says
    so in a comment on its line or among the three lines above it."""
    files, found = arrows()
    silent = []
    for arrow in found:
        if not arrow.in_function:
            continue
        lines = files[arrow.source].read_text().splitlines()
        above = [line for line in lines[: arrow.line - 1] if line.strip()][-3:]
        if not any("#" in line for line in [*above, lines[arrow.line - 1]]):
            silent.append(arrow.where(files, ROOT))
    assert not silent, "imports inside a function with no comment saying why:\n" + "\n".join(silent)


def test_the_graph_reader_resolves_relative_and_from_package_imports() -> None:
    files, found = arrows()
    pairs = {(a.source, a.target) for a in found}
    # `from dispatcher import _text` names the module, not the package.
    assert ("dispatcher.ops.views", "dispatcher._text") in pairs
    # `from .worker import jobs`, inside the façade's __getattr__: relative and in a function.
    legacy = [a for a in found if a.source == FACADE and a.target == "dispatcher.worker.jobs"]
    assert legacy and all(a.in_function for a in legacy)
    assert folder("dispatcher.web.console.routes", files) == "dispatcher/web/"
    assert folder("dispatcher.settings", files) == "dispatcher/settings.py"
    assert folder(FACADE, files) == "dispatcher/__init__.py"
    assert folder("dispatcher_handlers.log", files) == "handlers/"
    # One arrow per statement and module, however many names it imports.
    statements = [(a.source, a.target, a.line) for a in found]
    assert len(statements) == len(set(statements))


def main(argv: list[str]) -> None:
    root = Path(argv[0]).resolve() if argv else ROOT
    for key, value in figures(root).items():
        print(f"{key}: {value}")
    files, found = arrows(root)
    graph = graph_of(files, found)
    for component in strongly_connected(graph):
        if len(component) > 1:
            print("cycle:", " -> ".join(cycle_through(component, graph)))
    for (a, b), both in folder_ties(files, found).items():
        print(f"folders {a} <-> {b}: {len(both)} imports")


if __name__ == "__main__":
    main(sys.argv[1:])
