"""The receiver's settings: the secret, accepted packages, the inline-assessment link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispatcher.settings import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("KOMBO_", "DISPATCHER_", "REDIS_URL")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_the_receiver_settings_default_to_off() -> None:
    settings = load_settings()
    assert settings.kombo_webhook_secret is None
    assert settings.accepted_packages == []
    assert settings.inline_assessment_url is None
    with pytest.raises(ConfigError, match=r"^KOMBO_WEBHOOK_SECRET: not set \(the webhook"):
        settings.require_webhook_secret()


def test_the_secret_is_read_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KOMBO_WEBHOOK_SECRET", "whsec_do_not_leak_1234")
    settings = load_settings()
    assert settings.require_webhook_secret().get_secret_value() == "whsec_do_not_leak_1234"
    assert "whsec_do_not_leak_1234" not in repr(settings)
    assert "whsec_do_not_leak_1234" not in str(settings.model_dump())


def test_accepted_packages_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_ACCEPTED_PACKAGES", " typescript_test, ,python_senior ")
    assert load_settings().accepted_packages == ["typescript_test", "python_senior"]


def test_the_inline_url_template_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    template = "https://app.example.com/a/{integration_id}/{order_id}?p={package_id}"
    monkeypatch.setenv("DISPATCHER_INLINE_ASSESSMENT_URL", template)
    assert load_settings().inline_assessment_url == template


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("app.example.com/{order_id}", "must start with http:// or https://"),
        ("https://x/{candidate_email}", "unknown placeholder {candidate_email}"),
        ("https://x/{order_id", "is not a valid template"),
        ("https://x/{0}", "unknown placeholder {0}"),
    ],
)
def test_a_bad_inline_url_template_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("DISPATCHER_INLINE_ASSESSMENT_URL", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(f"DISPATCHER_INLINE_ASSESSMENT_URL: {message}")
    assert "\n" not in str(caught.value)
