"""``provision_http``: creates the candidate's test in the vendor's system over HTTP.

POSTs the order (as Kombo sent it, plus ``integration_id``) to ``PROVISION_URL`` with an
``Idempotency-Key`` that is the same for every attempt of this order, so the vendor can drop
a repeat. The 2xx JSON answer is the step's output; its ``test_url``, if any, is the
candidate's test link for later steps.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import AnyHttpUrl, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher import HandlerContext, Order, PermanentFailure, handler_settings

from ._http import SHARED_POOL, post_json


class ProvisionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    url: AnyHttpUrl = Field(alias="PROVISION_URL")
    token: SecretStr | None = Field(None, alias="PROVISION_TOKEN")
    timeout: float = Field(30.0, alias="PROVISION_TIMEOUT", gt=0)


class ProvisionHttpHandler:
    """POST the order to the vendor's provisioning endpoint."""

    name = "provision_http"

    def __init__(
        self,
        settings: ProvisionSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings or handler_settings(ProvisionSettings)
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
        body = {**order.to_payload(), "integration_id": context.integration_id}
        token = self.settings.token.get_secret_value() if self.settings.token else None
        response = post_json(
            self._client, str(self.settings.url), body, context, what="vendor API", token=token
        )
        try:
            output = response.json()
        except ValueError:
            raise PermanentFailure(
                f"vendor API answered HTTP {response.status_code} without a JSON body"
            ) from None
        if not isinstance(output, dict):
            raise PermanentFailure("vendor API answered JSON that is not an object")
        context.logger.info(
            "provisioned (test link: %s)", "yes" if output.get("test_url") else "no"
        )
        return output
