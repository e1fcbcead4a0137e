"""``notify_webhook``: posts a Slack-compatible ``{"text": ...}`` message about the order."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher import HandlerContext, Order, handler_settings

from ._http import SHARED_POOL, post_json
from .notify_email import find_test_url


class WebhookSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    url: AnyHttpUrl = Field(alias="NOTIFY_WEBHOOK_URL")
    timeout: float = Field(15.0, alias="NOTIFY_WEBHOOK_TIMEOUT", gt=0)


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reserves exactly these three characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class NotifyWebhookHandler:
    """Tell a chat channel (Slack, Mattermost, Teams via a bridge) about the order."""

    name = "notify_webhook"

    def __init__(
        self,
        settings: WebhookSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings or handler_settings(WebhookSettings)
        # One client for every thread of the worker (httpx.Client is thread-safe). httpx
        # keeps 20 idle connections by default: with --threads 50 the other 30 would be
        # opened and closed on every request. The thread count bounds the open ones.
        self._client = httpx.Client(
            timeout=self.settings.timeout, transport=transport, limits=SHARED_POOL
        )

    def close(self) -> None:
        """Release the HTTP connection pool (the worker calls this at shutdown)."""
        self._client.close()

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
        post_json(
            self._client,
            str(self.settings.url),
            {"text": "\n".join(lines)},
            context,
            what="notification webhook",
        )
        return {"posted": True}
