"""The command line's shape: usage errors are one line in the house style, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dispatcher.cli import cli


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["nope"], "No such command 'nope'."),
        (["status", "--nope"], "No such option '--nope'."),
        (["integrations", "add"], "INTEGRATION_IDS: required"),
        (["forget", "o1"], "--integration: required"),
        (["status", "--interval", "0"], "--interval: 0.0 is not in the range x>=0.1"),
        (["--log-level", "LOUD", "status"], "--log-level: 'LOUD' is not one of"),
        (["packages", "set"], "FILE: required"),
    ],
)
def test_a_usage_error_is_one_line_with_exit_2(args: list[str], line: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"dispatcher: error: {line}")
    assert result.stderr.count("\n") == 1, result.stderr


def test_help_and_version_are_untouched() -> None:
    assert CliRunner().invoke(cli, ["-h"]).stdout.startswith("Usage: ")
    assert CliRunner().invoke(cli, ["--version"]).exit_code == 0
