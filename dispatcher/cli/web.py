"""``dispatcher web``: the web process (/metrics, /healthz, the webhook receiver)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from types import FrameType

import click
from redis.exceptions import RedisError

from dispatcher.cli._common import fail, make_ledger, settings_of
from dispatcher.handler import HandlerConfigError
from dispatcher.settings import ConfigError
from dispatcher.store.connection import UnsuitableRedisError, connect, startup_check

log = logging.getLogger("dispatcher.cli")


@click.command()
@click.option("--host", envvar="DISPATCHER_WEB_HOST", default="127.0.0.1", show_default=True)
@click.option(
    "--port", envvar="PORT", type=click.IntRange(0, 65535), default=8000, show_default=True
)
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn's access log).")
@click.pass_context
def web(ctx: click.Context, host: str, port: int, access_log: bool) -> None:
    """Serve /metrics (Prometheus) and /healthz over HTTP (needs the web extra)."""
    # The web extra is optional: imported here, where its absence is one line, not when
    # every other command starts.
    try:
        import uvicorn

        from dispatcher.web.app import create_app, server_config
    except ImportError as exc:
        fail(
            "dispatcher web needs the web extra: pip install 'kombo-dispatcher[web]' "
            f"({exc.name or 'a dependency'} is not installed)"
        )
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    settings = settings_of(ctx)
    # Listen first: a port in use is one line and exit 1, not notices, "serving ... on
    # :5432" and then uvicorn's lines about the bind error.
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::" is IPv6
        listener = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        fail(f"--port: cannot listen on {host}:{port}: {reason}", code=1)
    port = int(listener.getsockname()[1])  # the port given, or the one chosen for 0
    # Start even when Redis is down: /healthz then says 503, which is what it is for; and
    # say it fast (probes time out after a second or so): one quick retry, not redis-py's
    # default backoff of several seconds.
    try:
        redis = connect(
            settings.redis_url.get_secret_value(),
            role="web",
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        )
    except UnsuitableRedisError as exc:
        fail(str(exc))
    try:
        startup_check(redis, process="web")
    except UnsuitableRedisError as exc:
        fail(str(exc), code=1)
    except RedisError:
        pass  # Redis is down: /healthz says so
    routes = []
    background = []
    if settings.kombo_webhook_secret is not None:
        # Needs the web extra (Starlette), checked above: imported here, as the app is.
        from dispatcher.web.webhook import webhook_receiver

        try:
            receiver = webhook_receiver(settings, make_ledger(settings, redis))
        except (ConfigError, HandlerConfigError) as exc:
            fail(str(exc))
        routes = receiver.routes
        if receiver.confirmer is not None:
            background.append(receiver.confirm_later)
        else:
            log.warning(
                "DISPATCHER_WEBHOOK_CONFIRM is off: webhook orders are dispatched without "
                "asking Kombo, and a replayed delivery dispatches its order again"
            )
    else:
        log.warning("KOMBO_WEBHOOK_SECRET is not set: the webhook receiver is off")
    app = create_app(settings, redis, extra_routes=routes, background=background)
    # The app's objects live as long as the process: keep them out of the garbage collector's
    # full passes, which otherwise stall every request in flight for ~30 ms.
    gc.freeze()
    log.info(
        "serving /metrics, /healthz%s on http://%s:%d",
        " and /webhooks/kombo" if routes else "",
        host,
        port,
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then raises the signal again with the
    # handlers it found; these make that a clean exit 0, like the other commands.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    server = uvicorn.Server(
        server_config(app, settings, host=host, port=port, access_log=access_log)
    )
    server.run(sockets=[listener])
    if not server.started:
        fail(f"dispatcher web: could not serve on {host}:{port} (see the error above)", 1)


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    log.info("received %s, stopped", signal.Signals(signum).name)
