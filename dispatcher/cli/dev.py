"""Commands for trying the dispatcher out: ``sim`` (a simulated Kombo) and ``demo``."""

from __future__ import annotations

import logging
import shlex
import sys

import click

from dispatcher.cli._common import fail


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--integrations", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--orders",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="OPEN orders per integration.",
)
@click.option(
    "--closed", type=click.IntRange(0), default=None, help="Closed orders per integration."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--api-key", default="sim-api-key", show_default=True, envvar="SIM_API_KEY")
@click.option("--latency", type=click.FloatRange(0), default=0.0, help="Seconds per request.")
@click.option("--rate-limit", type=click.FloatRange(0, 1), default=0.0, help="P(429).")
@click.option("--retry-after", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--server-error", type=click.FloatRange(0, 1), default=0.0, help="P(500).")
@click.option("--malformed", type=click.FloatRange(0, 1), default=0.0, help="P(bad JSON).")
@click.option(
    "--schema-drift/--no-schema-drift",
    default=True,
    show_default=True,
    help="About one order in twenty carries an unknown field or hiring-team role; "
    "--no-schema-drift for strict clients (Kombo's official SDK).",
)
def sim(
    host: str,
    port: int,
    integrations: int,
    orders: int,
    closed: int | None,
    seed: int,
    api_key: str,
    latency: float,
    rate_limit: float,
    retry_after: float,
    server_error: float,
    malformed: float,
    schema_drift: bool,
) -> None:
    """Serve a simulated Kombo assessment API (for the demo, tests and benchmarks).

    Prints the settings that point the dispatcher at it as ``export`` lines, ready to paste.
    """
    # A stand-in for tests, demos and benchmarks, not part of the product: loaded only for
    # `sim`, not by every command.
    from dispatcher.testing.sim import Faults, Simulator

    simulator = Simulator(
        integrations,
        orders,
        closed=closed,
        api_key=api_key,
        seed=seed,
        faults=Faults(
            rate_limit=rate_limit,
            retry_after=retry_after,
            server_error=server_error,
            malformed=malformed,
            latency=latency,
        ),
        schema_drift=schema_drift,
    )

    def announce(base_url: str) -> None:
        # Once the socket listens (so a script may go on at once), ready to paste.
        for name, value in (
            ("KOMBO_BASE_URL", base_url),
            ("KOMBO_API_KEY", api_key),
            ("KOMBO_INTEGRATION_IDS", ",".join(simulator.integration_ids)),
        ):
            click.echo(f"export {name}={shlex.quote(value)}", err=True)

    simulator.serve_forever(host, port, ready=announce)


@click.command()
@click.option("--integrations", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--orders", type=click.IntRange(1, 500), default=12, show_default=True)
def demo(integrations: int, orders: int) -> None:
    """Run the whole pipeline in process: no Redis server, no Kombo key needed."""
    # The demo runs on the stand-ins (dispatcher/testing/) and the demo extra: loaded only
    # for `demo`, not by every command.
    from dispatcher.demo import DemoUnavailable, run_demo

    logging.getLogger().setLevel(logging.WARNING)
    try:
        code = run_demo(integrations=integrations, orders=orders, echo=click.echo)
    except DemoUnavailable as exc:
        fail(str(exc))
    sys.exit(code)
