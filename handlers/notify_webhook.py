"""``notify_webhook``: posts a Slack-compatible ``{"text": ...}`` message about the order."""

from __future__ import annotations

from typing import Any

from pydantic import AnyHttpUrl, Field, SecretStr, TypeAdapter, ValidationError, field_validator

from dispatcher import HandlerContext, Order

from ._http import HttpHandler, HttpSettings
from .notify_email import find_test_url

_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class WebhookSettings(HttpSettings):
    # A secret: a Slack (or Mattermost, Teams) incoming-webhook URL is all it takes to post
    # to the channel, so it is masked in logs and failure reasons like a token.
    url: SecretStr = Field(alias="NOTIFY_WEBHOOK_URL")
    timeout: float = Field(15.0, alias="NOTIFY_WEBHOOK_TIMEOUT", gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        try:
            _URL.validate_python(value.get_secret_value())
        except ValidationError:
            raise ValueError("must be an http(s) URL") from None  # not echoing the value
        return value


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reserves exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class NotifyWebhookHandler(HttpHandler[WebhookSettings]):
    """Tell a chat channel (Slack, Mattermost, Teams via a bridge) about the order."""

    name = "notify_webhook"
    settings_class = WebhookSettings

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        job = order.job.name or "a job"
        lines = [
            f"Assessment ordered: {_slack_escape(order.candidate.full_name)} for "
            f"{_slack_escape(job)} (package {_slack_escape(order.package_id)})"
        ]
        test_url = find_test_url(context)
        if test_url:
            lines.append(f"Test link: <{test_url}>")
        lines.append(f"Kombo order {_slack_escape(order.id)}")
        self._post(
            self.settings.url.get_secret_value(),
            {"text": "\n".join(lines)},
            context,
            what="notification webhook",
        )
        return {"posted": True}
