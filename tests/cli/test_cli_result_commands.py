"""`dispatcher result` and `dispatcher packages` against the simulator over a real socket.

Most cases run the CLI in process (click's runner); one runs it as a subprocess, as an
operator would.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from redis import Redis

from dispatcher.store import throughput
from dispatcher.store.keys import Keys
from dispatcher.store.result_record import recorded_result
from dispatcher.store.results import Outbox
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator, SimulatorServer
from dispatcher.testing.sim.envelope import ApiError
from support import dispatcher_env
from support.ops import run

pytestmark = pytest.mark.redis
URL = "https://vendor.example/r/1"
PACKAGES = [
    {"id": "ts", "type": "SKILLS_TEST", "name": "TypeScript", "description": "Two hours."},
    {"id": "big5", "type": "BEHAVIORAL", "name": "Big Five", "description": "Personality."},
]


class WarningSimulator(Simulator):
    """Kombo answering every result with a warning (as it does for fields an ATS ignores),
    and refusing the package lists of the integrations in ``refuse_packages``."""

    refuse_packages: frozenset[str] = frozenset()

    def _put_packages(self, request: Any, integration_id: str) -> Any:
        if integration_id in self.refuse_packages:
            raise ApiError(400, "PLATFORM.INPUT_INVALID", "this ATS takes at most one package")
        return super()._put_packages(request, integration_id)

    def _put_result(self, request: Any, integration_id: str, *, order_id: str) -> Any:
        status, payload = super()._put_result(request, integration_id, order_id=order_id)
        payload["warnings"].append({"message": "attachments are not shown in this ATS"})
        return status, payload


@pytest.fixture
def sim() -> WarningSimulator:
    return WarningSimulator(2, 3, seed=9, faults=Faults(retry_after=0.05))


@pytest.fixture
def env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shared environment (tests/conftest.py), with retries for the simulator's faults."""
    monkeypatch.setenv("KOMBO_RETRY_BUDGET", "5")
    return {**env, "KOMBO_RETRY_BUDGET": "5"}


def one_error_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dispatcher: error: ")
    return lines[0].removeprefix("dispatcher: error: ")


# -- dispatcher result -----------------------------------------------------------------------------


def test_a_result_is_written_with_everything_and_the_order_marked_finished(
    env: dict[str, str], sim: Simulator, redis: Redis, tmp_path: Path
) -> None:
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7 fake")
    result = run(
        "result", order_id, "--integration", integration, "--status", "COMPLETED",
        "--result-url", URL, "--completed-at", "2026-03-01T10:00:00+01:00",
        "--score", "41.5", "--max-score", "50",
        "--attribute", "Level=Senior", "--attribute", "Note=a=b",
        "--attachment", str(tmp_path / "report.pdf"),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"order {order_id} ({integration}): result COMPLETED written\n"
    assert "kombo warning: attachments are not shown in this ATS" in result.stderr
    sent = sim.results[(integration, order_id)]
    assert sent["completed_at"] == "2026-03-01T09:00:00.000Z"
    assert (sent["score"], sent["max_score"]) == (41.5, 50)
    assert sent["attributes"] == [
        {"type": "TEXT", "label": "Level", "value": "Senior"},
        {"type": "TEXT", "label": "Note", "value": "a=b"},
    ]
    [attachment] = sent["attachments"]
    assert attachment["name"] == "report.pdf"
    assert attachment["content_type"] == "application/pdf"
    assert base64.b64decode(attachment["data"]) == b"%PDF-1.7 fake"
    keys = Keys("dispatcher")
    assert recorded_result(redis, keys, integration, order_id)["status"] == "COMPLETED"
    assert redis.hget(keys.stats, "results_written") == b"1"
    # The console's chart counts it too (the minute it was written).
    assert throughput.read_series(redis, keys, time.time()).total("results") == 1


def test_a_rate_limited_result_is_retried(env: dict[str, str], sim: Simulator) -> None:
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    sim.fail_next("rate_limit", 2)
    result = run(
        "result", order_id, "--integration", integration, "--status", "CANCELLED",
        "--result-url", URL,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert sim.results[(integration, order_id)]["status"] == "CANCELLED"
    assert sim.request_count == 3


def test_a_kombo_error_is_one_line_with_its_code_and_nothing_is_recorded(
    env: dict[str, str], sim: Simulator, redis: Redis
) -> None:
    integration = sim.integration_ids[0]
    result = run(
        "result", "NO_SUCH_ORDER", "--integration", integration, "--status", "COMPLETED",
        "--result-url", URL,
    )  # fmt: skip
    assert result.exit_code == 1
    line = one_error_line(result)
    assert line.startswith(
        f"order NO_SUCH_ORDER: result write failed: integration {integration}: "
        "PLATFORM.INPUT_INVALID"
    )
    assert "(log: https://" in line
    assert redis.hlen(Keys("dispatcher").results(integration)) == 0
    record = Outbox(redis, "dispatcher", "dispatcher-results").get(integration, "NO_SUCH_ORDER")
    assert record is not None and record.state == "failed" and record.reason in line


def _result_args(**changes: str | None) -> list[str]:
    options = {
        "--integration": "lever:x",
        "--status": "COMPLETED",
        "--result-url": URL,
        **changes,
    }
    args = ["result", "ORD1"]
    for option, value in options.items():
        if value is not None:
            args += [option, value]
    return args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["result"], "ORDER_ID: required"),
        (_result_args(**{"--integration": None}), "--integration: required"),
        (_result_args(**{"--status": None}), "--status: required, COMPLETED or CANCELLED"),
        (_result_args(**{"--status": "OPEN"}), "--status: 'OPEN' is not one of"),
        (_result_args(**{"--result-url": None}), "--result-url: required"),
        (_result_args(**{"--result-url": "www.x.com"}), "--result-url: must be an http(s) URL"),
        (_result_args(**{"--completed-at": "yesterday"}), "--completed-at: not an ISO 8601"),
        (_result_args(**{"--score": "ten", "--max-score": "20"}), "--score: 'ten' is not a valid"),
        (_result_args(**{"--score": "inf", "--max-score": "20"}), "--score: must be a finite"),
        (_result_args(**{"--score": "10"}), "--score and --max-score go together"),
        (_result_args(**{"--attribute": "no-equals"}), "--attribute: expected LABEL=VALUE"),
        (_result_args(**{"--attribute": "=v"}), "--attribute: expected LABEL=VALUE"),
        (_result_args(**{"--attachment": "/no/such/file.pdf"}), "--attachment /no/such/file.pdf:"),
        ([*_result_args(), *["--attachment", "f"] * 6], "--attachment: at most 5 attachments"),
    ],
)
def test_bad_result_input_is_one_line_naming_the_option_and_nothing_is_sent(
    env: dict[str, str], sim: Simulator, args: list[str], message: str
) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(message)
    assert sim.request_count == 0


def test_several_bad_result_options_are_all_named_on_the_one_line(
    env: dict[str, str], sim: Simulator
) -> None:
    # Issue 23: only the first was said; fixing it then met the next one.
    args = _result_args(**{"--result-url": "www.x.com", "--score": "inf", "--max-score": "20"})
    result = run(*[*args, "--completed-at", "2026-03-01T10:00:00"])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--result-url: must be an http(s) URL" in line, line
    assert "--score: must be a finite number" in line, line
    assert "more)" not in line
    assert sim.request_count == 0


def test_result_needs_the_api_key(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KOMBO_API_KEY")
    result = run(*_result_args())
    assert result.exit_code == 2
    assert one_error_line(result).startswith("KOMBO_API_KEY: not set")


def test_nothing_is_sent_when_redis_cannot_record_it(
    env: dict[str, str], sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    result = run(
        "result", order_id, "--integration", integration, "--status", "COMPLETED",
        "--result-url", URL,
    )  # fmt: skip
    assert result.exit_code == 1
    assert one_error_line(result).startswith("REDIS_URL: cannot reach Redis")
    assert "hunter2" not in result.stderr
    assert sim.results == {}


# -- dispatcher packages ---------------------------------------------------------------------------


@pytest.fixture
def packages_file(tmp_path: Path) -> Path:
    path = tmp_path / "packages.json"
    path.write_text(json.dumps({"packages": PACKAGES}))
    return path


def test_packages_set_shows_the_changes_and_asks_first(
    env: dict[str, str], sim: Simulator, packages_file: Path
) -> None:
    first = sim.integration_ids[0]
    sim.packages[first] = [
        {**PACKAGES[1], "name": "Big 5"},
        {"id": "old", "type": "REFERENCE_CHECK", "name": "Refs", "description": ""},
    ]
    declined = run("packages", "set", str(packages_file), "--integration", first, input="n\n")
    assert declined.exit_code == 1
    assert declined.stderr.splitlines() == [
        "Replace the package list of 1 integration(s)? [y/N]: n",
        "dispatcher: error: aborted: nothing changed",
    ]
    assert declined.stdout.splitlines() == [
        f"integration {first}: 1 added, 1 changed, 1 marked deleted, 0 unchanged",
        "  + ts (SKILLS_TEST): TypeScript",
        "  ~ big5: name 'Big 5' -> 'Big Five'",
        "  - old (REFERENCE_CHECK): Refs  [marked deleted]",
    ]
    assert [p["id"] for p in sim.packages[first]] == ["big5", "old"]  # untouched

    accepted = run("packages", "set", str(packages_file), "--integration", first, input="y\n")
    assert accepted.exit_code == 0, accepted.stderr
    assert accepted.stdout.endswith(f"integration {first}: packages replaced\n")
    assert sim.packages[first] == PACKAGES


def test_packages_set_all_with_yes_replaces_every_configured_integration_from_toml(
    env: dict[str, str], sim: Simulator, tmp_path: Path
) -> None:
    path = tmp_path / "packages.toml"
    path.write_text(
        "".join(
            f'[[packages]]\nid = "{p["id"]}"\ntype = "{p["type"]}"\nname = "{p["name"]}"\n'
            f'description = "{p["description"]}"\n\n'
            for p in PACKAGES
        )
    )
    sim.fail_next("rate_limit")  # retried
    result = run("packages", "set", str(path), "--all", "--yes")
    assert result.exit_code == 0, result.stderr
    assert all(sim.packages[i] == PACKAGES for i in sim.integration_ids)
    again = run("packages", "set", str(path), "--all", "--yes")
    assert again.exit_code == 0
    assert again.stdout.endswith("nothing to change\n")


def test_packages_get_prints_what_set_reads(
    env: dict[str, str], sim: Simulator, tmp_path: Path
) -> None:
    first, second = sim.integration_ids
    sim.packages[first] = PACKAGES
    one = run("packages", "get", "--integration", first)
    assert one.exit_code == 0
    assert json.loads(one.stdout) == {"packages": PACKAGES}
    every = run("packages", "get", "--all")
    assert json.loads(every.stdout) == {first: {"packages": PACKAGES}, second: {"packages": []}}
    (tmp_path / "got.json").write_text(one.stdout)
    same = run("packages", "set", str(tmp_path / "got.json"), "--integration", first)
    assert same.stdout.endswith("nothing to change\n")


def test_packages_set_changes_nothing_if_a_current_list_cannot_be_read(
    env: dict[str, str], sim: Simulator, packages_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOMBO_INTEGRATION_IDS", f"{sim.integration_ids[0]},lever:not-connected")
    result = run("packages", "set", str(packages_file), "--all", "--yes")
    assert result.exit_code == 1
    assert "PLATFORM.INTEGRATION_NOT_FOUND" in result.stderr
    assert "nothing changed" in result.stderr
    assert sim.packages == {}


def test_packages_set_reports_the_integrations_it_could_not_update(
    env: dict[str, str], sim: WarningSimulator, packages_file: Path
) -> None:
    first, second = sim.integration_ids
    sim.refuse_packages = frozenset({second})
    result = run("packages", "set", str(packages_file), "--all", "--yes")
    assert result.exit_code == 1
    assert f"integration {first}: packages replaced" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith(f"dispatcher: error: integration {second}: PLATFORM.INPUT_INVALID")
    assert errors[-1] == "dispatcher: error: 1 of 2 integration(s) not updated"
    assert sim.packages == {first: PACKAGES}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["packages", "set"], "FILE: required"),
        (["packages", "set", "{file}"], "--integration ID or --all: required"),
        (["packages", "set", "{file}", "--all", "--integration", "x"], "--integration and --all"),
        (["packages", "set", "/no/such.json", "--all"], "/no/such.json: cannot read"),
        (
            ["packages", "set", "{bad}", "--all"],
            "packages[1] (id big5): field type: must be one of",
        ),
        (["packages", "get"], "--integration ID or --all: required"),
    ],
)
def test_bad_packages_input_is_one_line_and_nothing_is_sent(
    env: dict[str, str], sim: Simulator, tmp_path: Path, packages_file: Path,
    args: list[str], message: str,
) -> None:  # fmt: skip
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([PACKAGES[0], {**PACKAGES[1], "type": "PERSONALITY"}]))
    args = [arg.format(file=packages_file, bad=bad) for arg in args]
    result = run(*args)
    assert result.exit_code == 2
    assert message in one_error_line(result)
    assert sim.request_count == 0


def test_packages_all_needs_configured_integrations(
    env: dict[str, str], packages_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KOMBO_INTEGRATION_IDS")
    result = run("packages", "set", str(packages_file), "--all")
    assert result.exit_code == 2
    assert one_error_line(result).startswith("KOMBO_INTEGRATION_IDS: not set")


# -- as a process ---------------------------------------------------------------------------


def test_result_as_a_subprocess(
    redis_url: str, redis: Redis, sim: Simulator, kombo: SimulatorServer, tmp_path: Path
) -> None:
    integration = sim.integration_ids[1]
    order_id = sim.orders(integration)[1]["id"]
    env = dispatcher_env(redis_url, KOMBO_BASE_URL=kombo.url, KOMBO_API_KEY=DEFAULT_API_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "result", order_id, "--integration", integration,
         "--status", "COMPLETED", "--result-url", URL],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "kombo warning" in done.stderr
    assert sim.results[(integration, order_id)]["status"] == "COMPLETED"
    assert recorded_result(redis, Keys("dispatcher"), integration, order_id) is not None


def test_kombo_packages_of_a_null_or_unknown_type_are_read_and_replaced(
    env: dict[str, str], sim: Simulator, packages_file: Path, tmp_path: Path
) -> None:
    # Issue 14, item 11: Kombo's schema allows `type: null` (its SDK takes it), and a type
    # added after this release must not sink the list either.
    first = sim.integration_ids[0]
    listed = [
        {"id": "legacy", "type": None, "name": "Legacy", "description": ""},
        {"id": "ac", "type": "ASSESSMENT_CENTER", "name": "Centre", "description": "New."},
    ]
    sim.packages[first] = listed
    got = run("packages", "get", "--integration", first)
    assert got.exit_code == 0, got.stderr
    assert json.loads(got.stdout) == {"packages": listed}

    replaced = run("packages", "set", str(packages_file), "--integration", first, "--yes")
    assert replaced.exit_code == 0, replaced.stderr
    assert "  - legacy (None): Legacy  [marked deleted]" in replaced.stdout.splitlines()
    assert sim.packages[first] == PACKAGES

    # What we send stays strict: the listed file is refused, naming the package and field.
    (tmp_path / "got.json").write_text(got.stdout)
    refused = run("packages", "set", str(tmp_path / "got.json"), "--integration", first)
    assert refused.exit_code == 2
    assert "packages[0] (id legacy): field type: must be one of " in one_error_line(refused)
    assert sim.packages[first] == PACKAGES
