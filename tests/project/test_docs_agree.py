"""Issue 23: the README and the code's own docs agree with the code (the Procfile's
processes, the handler threads, the declared dependencies, the curl examples' port)."""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import files, packages_distributions
from pathlib import Path

import dispatcher.handler

ROOT = Path(__file__).resolve().parents[2]
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def test_the_readme_counts_the_procfiles_processes() -> None:
    processes = [line for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line]
    readme = (ROOT / "README.md").read_text()
    assert f"`Procfile`'s {WORDS[len(processes)]} processes" in readme
    for line in processes:
        name, command = (part.strip() for part in line.split(":", 1))
        assert f"`{name}: {' '.join(command.split())}" in " ".join(readme.split())


def test_the_handler_contract_says_threads_share_the_instance() -> None:
    doc = " ".join((dispatcher.handler.__doc__ or "").split())
    assert "never called concurrently" not in doc
    assert "called by up to N threads at the same time" in doc
    guide = " ".join((ROOT / "docs" / "handlers.md").read_text().split())
    assert "its `handle` is called by up to N threads at the same time" in guide


def test_the_guarantees_hold_no_stray_paragraph() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    assert "accepts" not in section and "It runs in the webhook request" not in section


# Ours, and what a declared distribution ships as its own part: pydantic's core (pinned by
# pydantic) and uvicorn's HTTP parser (h11, pinned by uvicorn).
_PART_OF_A_DECLARED_ONE = {"kombo-dispatcher", "pydantic-core", "h11"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _owners(module: str, candidates: list[str]) -> list[str]:
    """Which of ``candidates`` ship ``module``: a namespace package (``opentelemetry``) comes
    in parts from many distributions, and only the part imported must be declared."""
    if len(candidates) < 2:
        return candidates
    parts = module.split(".")
    while parts:
        base = "/".join(parts)
        wanted = {f"{base}/__init__.py", f"{base}.py"}
        found = [d for d in candidates if any(str(f) in wanted for f in files(d) or ())]
        if found:
            return found
        parts.pop()
    return candidates


def test_every_third_party_import_of_the_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _normal(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])
        for group in [project["dependencies"], *project["optional-dependencies"].values()]
        for requirement in group
    }
    core = {re.split(r"[\[<>=!~ ;]", r, maxsplit=1)[0].lower() for r in project["dependencies"]}
    distributions = packages_distributions()
    missing = set()
    for path in [*(ROOT / "dispatcher").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
                if len(distributions.get(node.module.split(".")[0], [])) > 1:
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                for dist in _owners(name, distributions.get(top, [])):
                    if _normal(dist) in _PART_OF_A_DECLARED_ONE:
                        continue
                    if _normal(dist) not in declared:
                        missing.add(f"{dist} ({path.relative_to(ROOT)})")
    assert not missing, sorted(missing)
    assert "click" in core  # every command imports it


def test_curl_examples_use_the_port_web_was_started_on() -> None:
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.DOTALL):
            if not re.search(r"curl[^\n]*//(127\.0\.0\.1|localhost):8000", block):
                continue
            # 8000 is web's port only when started so (PORT, set by a Procfile runner, wins)
            assert "dispatcher web --port 8000" in block, (path.name, block[:200])
