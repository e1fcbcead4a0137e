from __future__ import annotations

import subprocess
import sys

import pytest

from dispatcher.settings import ConfigError, load_settings
from support import dispatcher_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in list(__import__("os").environ):
        if name.startswith(("KOMBO_", "DISPATCHER_", "REDIS_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings()
    assert settings.redis_url.get_secret_value() == "redis://localhost:6379/0"
    assert settings.kombo_base_url == "https://api.kombo.dev/v1"
    assert settings.kombo_integration_ids == []
    assert settings.handlers == ["log"]
    assert settings.namespace == "dispatcher"
    assert settings.queue == "dispatcher-orders"
    assert settings.poll_interval == 60
    assert settings.orders_endpoint == "orders"


def test_comma_separated_lists_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMBO_INTEGRATION_IDS", "greenhouse:A, lever:B,,greenhouse:A")
    monkeypatch.setenv("DISPATCHER_HANDLERS", "provision_http, notify_email")
    settings = load_settings()
    assert settings.kombo_integration_ids == ["greenhouse:A", "lever:B"]
    assert settings.handlers == ["provision_http", "notify_email"]


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("DISPATCHER_QUEUE=from-dotenv\nKOMBO_API_KEY=k\n")
    settings = load_settings()
    assert settings.queue == "from-dotenv"
    assert settings.require_kombo().get_secret_value() == "k"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISPATCHER_POLL_INTERVAL", "soon"),
        ("DISPATCHER_POLL_INTERVAL", "-1"),
        ("DISPATCHER_ORDERS_ENDPOINT", "closed"),
        ("DISPATCHER_NAMESPACE", "has space"),
        ("DISPATCHER_HANDLERS", ","),
        ("KOMBO_BASE_URL", "api.kombo.dev"),
        ("REDIS_URL", "http://localhost"),
    ],
)
def test_an_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_a_secret_value_is_not_echoed_in_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://user:hunter2@localhost")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value)


def test_missing_api_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^KOMBO_API_KEY: "):
        load_settings().require_kombo()


def test_settings_repr_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMBO_API_KEY", "sk_live_secret")
    monkeypatch.setenv("REDIS_URL", "redis://:pw_secret@localhost:6379/0")
    text = repr(load_settings())
    assert "sk_live_secret" not in text
    assert "pw_secret" not in text


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DISPATCHER_POLL_INTERVAL": "x"}, "DISPATCHER_POLL_INTERVAL"),
        ({"KOMBO_INTEGRATION_IDS": "a:1"}, "KOMBO_API_KEY"),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(
    tmp_path, env: dict[str, str], variable: str
) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher", "poll", "--once"],
        env=dispatcher_env("redis://127.0.0.1:1/0", **env),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dispatcher: error: {variable}: ")
    assert "Traceback" not in result.stderr


# Issue 14, item 4: settings errors in the house style.


def _run(*args: str, cwd: object = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dispatcher", *args],
        env=dispatcher_env("redis://127.0.0.1:1/0", **env),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"), [("DISPATCHER_LOG_LEVEL", "loud"), ("DISPATCHER_LOG_FORMAT", "xml")]
)
def test_a_bad_log_setting_names_the_variable_in_one_line(
    tmp_path, variable: str, value: str
) -> None:  # type: ignore[no-untyped-def]
    result = _run("status", cwd=tmp_path, **{variable: value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"dispatcher: error: {variable}: '{value}' is not one of ")


def test_the_log_option_is_named_when_given_as_an_option(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _run("--log-level", "loud", "status", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("dispatcher: error: --log-level: 'loud' ")


def test_every_invalid_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_POLL_INTERVAL", "x")
    monkeypatch.setenv("DISPATCHER_PAGE_SIZE", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert "more)" not in message
    assert message.startswith("DISPATCHER_POLL_INTERVAL: ")
    assert "; DISPATCHER_PAGE_SIZE: " in message
    assert "\n" not in message


@pytest.mark.parametrize("variable", ["DISPATCHER_POLL_INTERVAL", "KOMBO_API_KEY", "KOMBO_TIMEOUT"])
def test_an_empty_setting_means_unset(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, "")
    settings = load_settings()
    assert settings.poll_interval == 60.0
    assert settings.kombo_timeout == 30.0
    assert settings.kombo_api_key is None


def test_the_log_level_setting_takes_any_case_as_the_option_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCHER_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


def test_demo_without_its_extra_is_one_error_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys; sys.modules['fakeredis'] = None; sys.argv = ['dispatcher', 'demo'];"
        " from dispatcher.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dispatcher_env("redis://127.0.0.1:1/0"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "dispatcher: error: demo: needs the demo extra (fakeredis is missing): "
        "pip install 'kombo-dispatcher[demo]'\n"
    )


def test_the_sweep_report_counts_in_the_singular(capsys: pytest.CaptureFixture[str]) -> None:
    from dispatcher.cli.poll import _echo_report
    from dispatcher.poller.report import SweepReport

    _echo_report(SweepReport(integrations=1, pages=1, orders_seen=3, orders_new=1), False)
    assert capsys.readouterr().out.startswith("1 integration, 1 page, 3 OPEN orders seen")
