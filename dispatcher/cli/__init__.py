"""The ``dispatcher`` command line: one module per command group, each parsing its options,
calling the package that does the work and printing the outcome.

- :mod:`.poll` ``poll`` · :mod:`.worker` ``worker`` (and ``worker --results``) · :mod:`.web`
  ``web`` (the Procfile's processes)
- :mod:`.integrations` ``integrations add|remove|pause|resume|list``
- :mod:`.ops` ``status``, ``failed``, ``show``, ``forget``, ``retry`` (``--results``: of
  result writes), ``replay``, ``handlers``
- :mod:`.reconcile` ``reconcile``
- :mod:`.results` ``result``, ``results``, ``packages get|set``
- :mod:`.dev` ``sim``, ``demo``

Every error is one line, ``dispatcher: error: ...``: a usage error (exit 2) as well as a
key of the wrong type met by any command (exit 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from dispatcher import tracing
from dispatcher.cli import dev, integrations, ops, poll, reconcile, results, web, worker
from dispatcher.cli._common import fail
from dispatcher.logs import configure_logging
from dispatcher.settings import Settings
from dispatcher.store.key_types import shared_keys
from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import queue_key
from dispatcher.store.wrongtype import describe, find_wrong_types
from dispatcher.unknown_settings import CHECKED, warn_unknown_settings

__all__ = ["cli", "main"]


class _OneLineUsageError(click.UsageError):
    """A usage error shown in the house style: one line, no usage text (exit 2)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"dispatcher: error: {self.message}", err=True)


def _one_line(exc: click.UsageError) -> _OneLineUsageError:
    """``--status: required, COMPLETED or CANCELLED``, ``--score: 'ten' is not a valid
    float``: the parameter first, as the commands' own errors name it."""
    if isinstance(exc, _OneLineUsageError):
        return exc
    message = exc.format_message()
    param = getattr(exc, "param", None)
    if isinstance(exc, click.BadParameter) and param is not None:
        hint = (
            param.human_readable_name if isinstance(param, click.Argument) else "/".join(param.opts)
        )
        if _from_environment(exc.ctx, param):
            # DISPATCHER_LOG_LEVEL=loud: the operator never typed --log-level.
            hint = str(param.envvar)
        if isinstance(exc, click.MissingParameter):
            message = f"{hint}: required"
            if isinstance(param.type, click.Choice):
                *rest, last = [str(choice) for choice in param.type.choices]
                message += ", " + (f"{', '.join(rest)} or {last}" if rest else last)
        else:
            message = f"{hint}: {exc.message.removesuffix('.')}"
    return _OneLineUsageError(message, exc.ctx)


def _from_environment(ctx: click.Context | None, param: click.Parameter) -> bool:
    """Whether ``param``'s value came from its environment variable."""
    if ctx is None or param.name is None or not isinstance(param.envvar, str):
        return False
    return ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT


class _Commands(click.Group):
    """The command group: every usage error, and a key of the wrong type met by any command,
    is one line instead of click's usage text or a traceback."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a subcommand's
            raise _one_line(exc) from None
        except ResponseError as exc:
            fail(f"Redis refused a command: {_refusal(ctx, exc)}", code=1)


def _refusal(ctx: click.Context, exc: ResponseError) -> str:
    obj = ctx.obj if isinstance(ctx.obj, dict) else {}
    settings, redis = obj.get("settings"), obj.get("redis")
    if not isinstance(settings, Settings) or not isinstance(redis, Redis):
        return describe(exc, [])
    expected = shared_keys(
        Keys(settings.namespace),
        queue_key(settings.queue),
        results_queue_key=queue_key(settings.results_queue),
    )
    try:
        wrong = find_wrong_types(redis, expected)
    except RedisError:
        wrong = []
    # Not a shared key: redis-py's line names the pipeline's command and key, if any.
    return describe(exc, wrong)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    envvar="DISPATCHER_LOG_LEVEL",
    default="INFO",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="DISPATCHER_LOG_FORMAT",
    default="text",
    show_default=True,
)
@click.version_option(package_name="kombo-dispatcher")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_format: str) -> None:
    """Dispatch Kombo assessment orders to pluggable handlers through RQ on Redis.

    Settings come from the environment (and an optional .env file); see the README.
    """
    ctx.ensure_object(dict)
    configure_logging(log_level.upper(), "json" if log_format == "json" else "text")
    tracing.configure(ctx.invoked_subcommand or "dispatcher")  # OTEL_* variables (issue 26)
    # The pollers `poll --processes N` starts are this command again: the command the
    # operator ran said it already (see dispatcher.unknown_settings.CHECKED).
    if not os.environ.get(CHECKED):
        warn_unknown_settings(os.environ, Path(".env"), known=_option_variables(cli))


def _option_variables(command: click.Command) -> set[str]:
    """The environment variables of every option of ``command`` and its subcommands."""
    names = {param.envvar for param in command.params if isinstance(param.envvar, str)}
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= _option_variables(sub)
    return names


for _command in (
    poll.poll,
    worker.worker,
    integrations.integrations,
    ops.retry,
    ops.handlers,
    dev.sim,
    dev.demo,
    ops.status,
    ops.failed,
    ops.show,
    ops.forget,
    ops.replay,
    reconcile.reconcile,
    web.web,
    results.result,
    results.results,
    results.packages,
):
    cli.add_command(_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="dispatcher")
