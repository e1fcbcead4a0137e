"""Test support for the webhook receiver: signed deliveries, and the app under real uvicorn."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from redis import Redis
from rq import Queue
from starlette.applications import Starlette

from dispatcher.plugins import Acceptor
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.web.bodies import body_middleware
from dispatcher.web.kombo_delivery import ORDER_EVENT, SIGNATURE_HEADER, sign
from dispatcher.web.webhook import webhook_routes
from support import free_port

SECRET = "kombo-test-secret"
QUEUE = "dispatcher-orders"


def event_body(
    order: dict[str, Any],
    integration_id: str,
    *,
    event_id: str = "evt_1",
    event_type: str = ORDER_EVENT,
) -> bytes:
    """An order-received event as Kombo sends it: the order plus its integration id."""
    data = {**order, "integration_id": integration_id}
    return json.dumps({"id": event_id, "type": event_type, "data": data}).encode()


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """The headers of a delivery of ``body`` signed with ``secret``."""
    return {SIGNATURE_HEADER: sign(secret, body), "Content-Type": "application/json"}


def make_ledger(redis: Redis, namespace: str = "dispatcher") -> Ledger:
    return Ledger(redis, Queue(QUEUE, connection=redis), namespace)


def make_app(ledger: Ledger, *, acceptors: Sequence[Acceptor] = (), **settings: Any) -> Starlette:
    """The receiver mounted on a bare Starlette app, as `dispatcher web` mounts it."""
    # Orders are dispatched unconfirmed here unless a test asks (no Kombo to ask).
    settings.setdefault("DISPATCHER_WEBHOOK_CONFIRM", False)
    config = Settings(_env_file=None, KOMBO_WEBHOOK_SECRET=SECRET, **settings)  # type: ignore[call-arg]
    return Starlette(
        routes=webhook_routes(config, ledger, acceptors=acceptors),
        middleware=body_middleware(config.web_body_timeout, config.web_body_budget),
    )


class AppClient:
    """A blocking client of an ASGI app in process (httpx's ASGI transport, a loop per call).

    Starlette's TestClient is not used: its httpx flavour is deprecated in the Starlette
    installed, and warnings are errors here.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(call())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


class ReceiverServer:
    """An app under a real uvicorn server, on a free port, in a daemon thread."""

    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ReceiverServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self._thread.join(10)
