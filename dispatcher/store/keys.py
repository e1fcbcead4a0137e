"""Every Redis key the dispatcher owns, in one place.

All of them sit under the namespace (``DISPATCHER_NAMESPACE``) so that two deployments can
share one Redis. RQ's own keys (``rq:queue:*``, ``rq:job:*``, registries) are RQ's; the
dispatcher only chooses their queue name and job ids. Every kind of key, RQ's included, is
described in :mod:`dispatcher.store.key_schema` (docs/redis-keys.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["Keys", "job_id_for", "order_ref", "parse_order_ref"]


def order_ref(integration_id: str, order_id: str) -> str:
    """One order as a key segment: ``integration:order``, unambiguous whatever the ids hold.

    Real Kombo integration ids have exactly one ``:`` (``greenhouse:HWUT...``) and order ids
    none: those pairs keep the plain form ``greenhouse:HWUT...:ORDER`` (two colons), so the
    step records of deployed versions keep working. Any other pair has ``%`` and ``:``
    percent-escaped in each id, joined by one ``:`` (exactly one colon). The two forms never
    meet, and each is reversible, so two different pairs never share a key: integration
    ``acme:AAA`` with order ``B:C`` is ``acme%3AAAA:B%3AC``, integration ``acme:AAA:B`` with
    order ``C`` is ``acme%3AAAA%3AB:C``.
    """
    if integration_id.count(":") == 1 and ":" not in order_id:
        return f"{integration_id}:{order_id}"
    return f"{_escape(integration_id)}:{_escape(order_id)}"


def parse_order_ref(ref: str) -> tuple[str, str] | None:
    """(integration id, order id) of an :func:`order_ref`; None for anything else."""
    parts = ref.split(":")
    if len(parts) == 3:
        return f"{parts[0]}:{parts[1]}", parts[2]
    if len(parts) == 2:
        return _unescape(parts[0]), _unescape(parts[1])
    return None


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace(":", "%3A")


def _unescape(text: str) -> str:
    return text.replace("%3A", ":").replace("%25", "%")


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names for one namespace."""

    namespace: str

    def seen(self, integration_id: str) -> str:
        """Hash: order id -> unix time it was first dispatched (the dedupe store)."""
        return f"{self.namespace}:seen:{integration_id}"

    @property
    def seen_integrations(self) -> str:
        """Set of integration ids that have a seen hash (so counting needs no SCAN)."""
        return f"{self.namespace}:seen-integrations"

    def sweep(self, integration_id: str) -> str:
        """Hash: the last sweep of one integration (times, counts, last error)."""
        return f"{self.namespace}:sweep:{integration_id}"

    def steps(self, integration_id: str, order_id: str) -> str:
        """Hash: handler name -> JSON {"output": ..., "completed_at": unix time} of each
        completed step of one order. Expires with the result TTL (outputs may hold personal
        data). The order is named by :func:`order_ref`."""
        return f"{self.namespace}:steps:{order_ref(integration_id, order_id)}"

    def effects(self, integration_id: str, order_id: str, handler: str) -> str:
        """Set of sub-effects a step already performed (e.g. the recipients already mailed),
        so a retried step skips them. Expires with the result TTL. The order is named by
        :func:`order_ref`; handler names never contain ``:`` (plugins.check_handler), so the
        handler is what follows the last ``:``."""
        return f"{self.namespace}:effects:{order_ref(integration_id, order_id)}:{handler}"

    @property
    def step_stats(self) -> str:
        """Hash of counters ``<handler>:completed`` / ``<handler>:failed``."""
        return f"{self.namespace}:step-stats"

    @property
    def integrations(self) -> str:
        """Set of integration ids registered with ``dispatcher integrations add``."""
        return f"{self.namespace}:integrations"

    @property
    def paused(self) -> str:
        """Set of paused integration ids (not swept until resumed)."""
        return f"{self.namespace}:integrations:paused"

    @property
    def schedule(self) -> str:
        """Sorted set: integration id -> unix time its next sweep is due (fleet-wide)."""
        return f"{self.namespace}:schedule"

    def lease(self, integration_id: str) -> str:
        """String: the poller currently sweeping the integration; expires (lease TTL)."""
        return f"{self.namespace}:lease:{integration_id}"

    @property
    def stats(self) -> str:
        """Hash of counters: ``orders_dispatched``, ``orders_rejected``, ``results_written``."""
        return f"{self.namespace}:stats"

    @property
    def swept_integrations(self) -> str:
        """Set of integration ids that have a sweep hash, including ones that never succeeded."""
        return f"{self.namespace}:swept-integrations"

    @property
    def kombo_requests(self) -> str:
        """Hash of Kombo request counters by endpoint and HTTP status (count, seconds, buckets)."""
        return f"{self.namespace}:kombo-requests"

    def rejected(self, integration_id: str) -> str:
        """Hash: order id -> JSON {"reason": message shown in the ATS, "at": unix time} of
        each order the webhook receiver rejected (answered 422). Written in the same atomic
        step that marks the order seen as ``rejected:<unix time>``, so polling skips it."""
        return f"{self.namespace}:rejected:{integration_id}"

    def results(self, integration_id: str) -> str:
        """Hash: order id -> JSON {"status": COMPLETED|CANCELLED, "at": unix time} of each
        order whose result was written back to Kombo (``dispatcher result``): finished."""
        return f"{self.namespace}:results:{integration_id}"

    def throughput(self, hour: int) -> str:
        """Hash: ``<kind>:<unix minute>`` -> count of orders found, dispatched and results
        written in that minute, for the console's chart; one hash per hour (``unix time //
        3600``), expiring a day after its hour (:mod:`dispatcher.store.throughput`)."""
        return f"{self.namespace}:throughput:{hour}"

    def outbox(self, integration_id: str, order_id: str) -> str:
        """Hash: one order's result on its way to Kombo (body, state, attempts, outcome);
        see dispatcher/store/results.py. The order is named by :func:`order_ref`."""
        return f"{self.namespace}:outbox:{order_ref(integration_id, order_id)}"

    def outbox_index(self, state: str) -> str:
        """Sorted set: order ref -> unix time, of the results in one state (``pending``:
        submitted, ``written``: written, ``failed``: failed)."""
        return f"{self.namespace}:outbox-{state}"

    def kombo_writes(self, integration_id: str) -> str:
        """Sorted set: holder -> lease expiry of the Kombo writes in flight for one
        integration (the DISPATCHER_KOMBO_WRITE_CONCURRENCY cap)."""
        return f"{self.namespace}:kombo-writes:{integration_id}"

    def in_flight(self, integration_id: str) -> str:
        """Sorted set: job id -> lease expiry of the orders of one integration fed to the
        worker queue or running (the DISPATCHER_MAX_IN_FLIGHT_PER_INTEGRATION cap)."""
        return f"{self.namespace}:in-flight:{integration_id}"

    @property
    def fair_ring(self) -> str:
        """List: the integrations with orders waiting for their turn, in turn order."""
        return f"{self.namespace}:fair-ring"

    @property
    def fair_parked(self) -> str:
        """Set: the integrations with orders waiting that are at their in-flight cap."""
        return f"{self.namespace}:fair-parked"

    def timeline(self, integration_id: str, order_id: str) -> str:
        """List of JSON events of one order's life that no other record keeps (provisioned,
        result submitted, written, failed). The order is named by :func:`order_ref`."""
        return f"{self.namespace}:timeline:{order_ref(integration_id, order_id)}"

    @property
    def provisioned(self) -> str:
        """Sorted set: order ref -> unix time its handler chain finished, until its final
        result is written (what ``status`` reports as stale)."""
        return f"{self.namespace}:provisioned"

    @property
    def result_stats(self) -> str:
        """Hash of result counters per integration: ``<integration>|written``, ``|failed``,
        ``|latency_sum``, ``|le|<bound>`` (write latency buckets)."""
        return f"{self.namespace}:result-stats"

    def dispatched(self, integration_id: str, order_id: str) -> str:
        """Hash: the job's own items (``data``, ``description``, ``meta``) as dispatched, so
        that the reconciler can rebuild a job whose hash was lost. Expires with the
        reconciler's window. The order is named by :func:`order_ref`."""
        return f"{self.namespace}:dispatched:{order_ref(integration_id, order_id)}"

    @property
    def reconcile(self) -> str:
        """Hash: the reconciler's schedule (``next_at``), its last pass and its counters."""
        return f"{self.namespace}:reconcile"

    @property
    def reconcile_lease(self) -> str:
        """String: the process running the periodic reconcile pass; expires."""
        return f"{self.namespace}:reconcile-lease"

    def console_login(self, client: str) -> str:
        """String: console login attempts of one client in the current window: an address
        (an IPv6 client by its /64) or ``device:<nonce>`` (a browser that logged in before)."""
        return f"{self.namespace}:console-login:{client}"

    @property
    def console_login_all(self) -> str:
        """String: console login attempts of every client without a device cookie in the
        current window (the global cap)."""
        return f"{self.namespace}:console-login-all"

    @property
    def webhook_unconfirmed(self) -> str:
        """Hash: order ref -> JSON of a webhook order Kombo could not confirm OPEN yet (Kombo
        down, or not listing it): ``dispatcher web`` confirms it later, then dispatches it or
        records that it is not OPEN (dispatcher/web/confirm.py)."""
        return f"{self.namespace}:webhook-unconfirmed"

    @property
    def webhook_unconfirmed_since(self) -> str:
        """Sorted set: order ref -> when a kept webhook order was received (beside
        :attr:`webhook_unconfirmed`, written with it): the oldest one's age in ``status``
        without reading every entry."""
        return f"{self.namespace}:webhook-unconfirmed-since"

    def console_session(self, nonce: str) -> str:
        """String: a live console session (deleted at logout: the cookie is dead then)."""
        return f"{self.namespace}:console-session:{nonce}"


def job_id_for(namespace: str, integration_id: str, order_id: str) -> str:
    """The RQ job id of one order: deterministic, unique per (namespace, integration, order).

    RQ job ids allow only letters, digits, ``_`` and ``-``, and integration ids contain ``:``,
    so the triple is hashed rather than escaped. The namespace is part of it because RQ's job
    keys (``rq:job:<id>``) are shared by every namespace on one Redis. Joining with NUL is
    unambiguous because no id holds one: order ids and the webhook's integration ids with
    control characters are refused (:func:`dispatcher.kombo.models.check_id`); the namespace and
    the configured integration ids are the operator's (``integrations add`` refuses them too).
    """
    digest = hashlib.blake2b(
        "\x00".join((namespace, integration_id, order_id)).encode(), digest_size=16
    ).hexdigest()
    return f"order-{digest}"
