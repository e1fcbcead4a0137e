"""The keys the processes share, and the type each must hold: what is checked for wrong
types (:func:`dispatcher.store.wrongtype.find_wrong_types`) by ``/healthz``, ``dispatcher
status``, the poller's fleet loop and a command that failed on a key of the wrong type.

Apart from :mod:`~dispatcher.store.wrongtype` because the lists name RQ's keys too
(:mod:`~dispatcher.store.rq_internals`, whose scripts start with the type guard,
``store/lua/_type_guard.lua``): this module stands above both.
"""

from __future__ import annotations

import time

from dispatcher.store.keys import Keys
from dispatcher.store.rq_internals import QUEUES_KEY
from dispatcher.store.throughput import hour_key

__all__ = ["integration_keys", "shared_keys"]


def shared_keys(
    keys: Keys,
    queue_key: str,
    *,
    results_queue_key: str | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """The keys every poller, worker, webhook and results API shares (key -> type), for
    ``/healthz``, ``status`` and for diagnosing a failed command: one broken, and nothing of
    its kind works (a string at ``{ns}:outbox-pending`` fails every results PUT; this hour's
    throughput hash every dispatch script; ``{ns}:webhook-unconfirmed`` every webhook delivery).

    ``results_queue_key``: the results queue's RQ key, when the caller knows it; ``now``:
    whose hour's throughput hash (default: the current one).
    """
    service = {
        keys.outbox_index("pending"): "zset",
        keys.outbox_index("written"): "zset",
        keys.outbox_index("failed"): "zset",
        keys.provisioned: "zset",
        keys.result_stats: "hash",
        hour_key(keys, time.time() if now is None else now): "hash",
        # A wrong-type confirmation hash makes every webhook delivery 503; a wrong-type
        # global login count every console login. The per-client and per-session console
        # keys cannot be listed without a SCAN: the console names them when it meets them.
        keys.webhook_unconfirmed: "hash",
        keys.webhook_unconfirmed_since: "zset",
        keys.console_login_all: "string",
    }
    if results_queue_key is not None:
        service[results_queue_key] = "list"
    return {
        keys.schedule: "zset",
        keys.integrations: "set",
        keys.paused: "set",
        keys.seen_integrations: "set",
        keys.swept_integrations: "set",
        keys.stats: "hash",
        keys.step_stats: "hash",
        keys.kombo_requests: "hash",
        queue_key: "list",
        QUEUES_KEY: "set",
        **service,
    }


def integration_keys(keys: Keys, integration_id: str) -> dict[str, str]:
    """The keys of one integration the poller touches (key -> type)."""
    return {
        keys.seen(integration_id): "hash",
        keys.sweep(integration_id): "hash",
        keys.lease(integration_id): "string",
    }
