"""The dispatcher's web app (needs the ``web`` extra): ``/metrics`` and ``/healthz``.

Other features add their routes through ``extra_routes`` (the webhook receiver does), so
one ``dispatcher web`` process serves them all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from .keys import Keys
from .metrics import CONTENT_TYPE, exposition
from .settings import Settings
from .status import take_snapshot
from .wrongtype import find_wrong_types, shared_keys

__all__ = ["create_app"]

log = logging.getLogger("dispatcher.web")


def create_app(
    settings: Settings, redis: Redis, *, extra_routes: Sequence[BaseRoute] = ()
) -> Starlette:
    """The Starlette app: ``GET /metrics`` (Prometheus text), ``GET /healthz`` (200 when
    Redis answers and the keys every process shares hold their types, 503 otherwise), plus
    ``extra_routes``.

    Endpoints are plain functions: Starlette runs them in its thread pool, where the
    blocking Redis client belongs.
    """

    def metrics(request: Request) -> Response:
        body = exposition(lambda: take_snapshot(redis, settings))
        return Response(body, media_type=CONTENT_TYPE)

    # The shared keys only: one TYPE each, one round trip, however many integrations. A broken
    # key of one integration is that integration's problem (status, /metrics), like a failing
    # Kombo integration; a broken schedule or queue stops every integration.
    shared = shared_keys(Keys(settings.namespace), Queue(settings.queue, connection=redis).key)

    def healthz(request: Request) -> Response:
        try:
            redis.ping()
            wrong = find_wrong_types(redis, shared)
        except (RedisError, OSError) as exc:
            log.warning("healthz: Redis does not answer: %s", exc)
            return PlainTextResponse(f"redis: {type(exc).__name__}\n", status_code=503)
        if wrong:
            lines = "".join(f"redis: {w}\n" for w in wrong)
            log.warning("healthz: %s", lines.strip().replace("\n", "; "))
            return PlainTextResponse(lines, status_code=503)
        return PlainTextResponse("ok\n")

    routes: list[BaseRoute] = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes)
