"""Every kind of Redis key the dispatcher writes or makes RQ write, described once: the table
of docs/redis-keys.md (:func:`schema_markdown`), with a pattern per kind that the tests match
every key a run leaves against. The keys themselves are named by
:class:`dispatcher.store.keys.Keys`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SCHEMA", "KeySpec", "schema_markdown"]


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One kind of Redis key the dispatcher writes or makes RQ write.

    ``pattern`` uses placeholders: ``{ns}`` (DISPATCHER_NAMESPACE), ``{queue}``
    (DISPATCHER_QUEUE), ``{job_id}`` (an order's job id, ``keys.job_id_for``), and
    ``{integration}``, ``{order}``, ``{handler}``, ``{worker}``, ``{execution}``,
    ``{scheduler}`` for ids. ``{integration}:{order}`` is ``keys.order_ref`` of the pair: the
    ids as they are for Kombo's usual shapes, else each escaped (``%3A``, ``%25``).
    """

    pattern: str
    type: str
    holds: str
    lifetime: str

    def regex(self, namespace: str, queue: str) -> re.Pattern[str]:
        """A regex matching the keys of this kind for one namespace and queue."""
        parts = re.split(r"(\{[a-z_]+\})", self.pattern)
        fixed = {"{ns}": re.escape(namespace), "{queue}": re.escape(queue)}
        body = "".join(
            fixed.get(part, _PLACEHOLDER_RES.get(part, ".+"))
            if part.startswith("{")
            else re.escape(part)
            for part in parts
        )
        return re.compile(f"^{body}$")


_JOB_ID_RE = "order-[0-9a-f]{32}"
_RESULT_JOB_ID_RE = "result-[0-9a-f]{32}"
_PLACEHOLDER_RES = {
    "{job_id}": _JOB_ID_RE,
    "{result_job_id}": _RESULT_JOB_ID_RE,
    "{state}": "(?:pending|written|failed)",
}

# The dispatcher's own keys, then RQ's keys that the dispatcher's queue and workers cause.
# docs/redis-keys.md shows this table (tests/store/test_keys.py checks that it is the same).
SCHEMA: tuple[KeySpec, ...] = (
    KeySpec(
        "{ns}:seen:{integration}",
        "hash",
        "order id -> `<unix time of first dispatch>[:<generation of a recent full sweep that "
        "saw it OPEN>]`, or `rejected:<unix time>`: the dedupe store (ids only, no payload)",
        "pruned after DISPATCHER_PRUNE_AFTER_SWEEPS (to twice as many less one) full sweeps "
        "without the order OPEN and "
        "DISPATCHER_SEEN_RETENTION; `dispatcher forget` removes one order",
    ),
    KeySpec(
        "{ns}:seen-integrations",
        "set",
        "integration ids that have a seen hash",
        "kept",
    ),
    KeySpec(
        "{ns}:stats",
        "hash",
        "counters: `orders_dispatched`, `orders_rejected`, `results_written`",
        "kept",
    ),
    KeySpec(
        "{ns}:sweep:{integration}",
        "hash",
        "last sweep: `last_attempt_at`, `duration`, `last_sweep_at`, `orders_seen`, "
        "`orders_new`, `pages`, `last_error`, `last_error_code`, `last_error_at`, `error_count`, "
        "`consecutive_failures`, `watermark` (start of the last successful sweep), "
        "`full_sweep_at`, `generation` (full sweeps so far), `last_sweep_kind`",
        "kept (one per integration); `integrations remove` drops it once the integration is "
        "neither configured nor registered",
    ),
    KeySpec(
        "{ns}:swept-integrations",
        "set",
        "integration ids that have a sweep hash (failing ones too)",
        "kept; entries follow the sweep hashes",
    ),
    KeySpec(
        "{ns}:kombo-requests",
        "hash",
        "Kombo requests by endpoint and status: `<endpoint>|<status>|count`, `...|sum` "
        "(seconds), `...|le|<bound>` (latency buckets)",
        "kept (a few dozen fields)",
    ),
    KeySpec(
        "{ns}:steps:{integration}:{order}",
        "hash",
        'handler -> JSON `{"output": ..., "completed_at": unix time}` of each completed step; '
        "`_attempts`: runs of the job so far. `{integration}:{order}` as they are when the "
        "integration id has one `:` and the order id none, else each with `%`, `:` escaped "
        "(`%25`, `%3A`)",
        "DISPATCHER_RESULT_TTL; `forget` deletes it",
    ),
    KeySpec(
        "{ns}:effects:{integration}:{order}:{handler}",
        "set",
        "sub-effects a step already performed (e.g. recipients mailed); "
        "`{integration}:{order}` as in the steps key; handler names hold no `:`",
        "DISPATCHER_RESULT_TTL; `forget` deletes it",
    ),
    KeySpec(
        "{ns}:rejected:{integration}",
        "hash",
        'order id -> JSON `{"reason", "at"}` of orders the webhook receiver rejected (422)',
        "kept (ids and the message shown in the ATS)",
    ),
    KeySpec(
        "{ns}:results:{integration}",
        "hash",
        'order id -> JSON `{"status", "at", "digest", "submission", "submitted_at"}` of final '
        "results written back (the digest and receipt answer the same body sent again)",
        "kept",
    ),
    KeySpec(
        "{ns}:throughput:{hour}",
        "hash",
        "per-minute counters of one hour (`{hour}` = unix time // 3600): `found:<unix minute>` "
        "(orders the sweeps listed), `dispatched:<unix minute>`, `results:<unix minute>` "
        "(results written back): the console's chart",
        "expires 25 hours after its hour began (EXPIREAT on each write)",
    ),
    KeySpec(
        "{ns}:console-login:{client}",
        "string",
        "login attempts of one client (the console's rate limit): an address, an IPv6 "
        "client by its /64, or `device:<nonce>` for a browser that logged in before",
        "DISPATCHER_CONSOLE_LOGIN_WINDOW after the window's first attempt",
    ),
    KeySpec(
        "{ns}:console-login-all",
        "string",
        "login attempts of every client without a device cookie (the console's global cap)",
        "DISPATCHER_CONSOLE_LOGIN_WINDOW after the window's first attempt",
    ),
    KeySpec(
        "{ns}:webhook-unconfirmed",
        "hash",
        "order ref -> JSON (integration, order, event id, received, attempts, last error) of "
        "a webhook order not yet confirmed OPEN with Kombo; `dispatcher web` retries it",
        "until confirmed (then dispatched, or recorded as not OPEN)",
    ),
    KeySpec(
        "{ns}:webhook-unconfirmed-since",
        "zset",
        "order ref -> when it was received, of each entry of `{ns}:webhook-unconfirmed` "
        "(written and removed with it): the oldest one's age for `dispatcher status`",
        "as `{ns}:webhook-unconfirmed`",
    ),
    KeySpec(
        "{ns}:console-session:{nonce}",
        "string",
        "a live console session; deleted at logout, so a captured cookie is dead after it",
        "DISPATCHER_CONSOLE_SESSION_TTL",
    ),
    KeySpec(
        "{ns}:outbox:{integration}:{order}",
        "hash",
        "one order's result for Kombo: `integration`, `order`, `state` (pending, written, "
        "failed), `status`, `body` (the JSON body, attachments included), `digest`, "
        "`submission`, `submitted_at`, `job` (the write job that owns it), `attempts`, "
        "`next_attempt_at`, `last_error`, `written_at`, `warnings`, `lost_answer`, `reason`, "
        "`failed_at`, `sent` (an attempt of the body was sent: it is locked), `read_back`, "
        "`kombo_result`, `next_body`, `next_submission`, `next_digest`, `next_status`, "
        "`next_submitted_at` (a body waiting behind a partial result on its way); "
        "`{integration}:{order}` as in the steps key",
        "kept while pending; DISPATCHER_RESULT_TTL once written, DISPATCHER_FAILURE_TTL once "
        "failed",
    ),
    KeySpec(
        "{ns}:outbox-{state}",
        "zset",
        "`{state}` is pending, written or failed: order ref (`{integration}:{order}`) -> "
        "unix time it entered the state",
        "an entry leaves with its state; written entries older than DISPATCHER_RESULT_TTL "
        "are trimmed on each write",
    ),
    KeySpec(
        "{ns}:kombo-writes:{integration}",
        "zset",
        "write job id -> lease expiry of Kombo writes in flight "
        "(DISPATCHER_KOMBO_WRITE_CONCURRENCY)",
        "entries expire with their lease (KOMBO_TIMEOUT + 10 s); the key shortly after",
    ),
    KeySpec(
        "{ns}:in-flight:{integration}",
        "zset",
        "job id -> lease expiry of the integration's orders fed to the worker queue or "
        "running (DISPATCHER_MAX_IN_FLIGHT_PER_INTEGRATION; only for a capped integration)",
        "entries expire with their lease (queued: 300 s; running: 30 s, renewed by the "
        "job's heartbeat); the key a minute after the last",
    ),
    KeySpec(
        "{ns}:fair-ring",
        "list",
        "integration ids with orders waiting for their turn, in turn order",
        "while orders wait",
    ),
    KeySpec(
        "{ns}:fair-parked",
        "set",
        "integration ids with orders waiting, at their in-flight cap",
        "until a lease of theirs frees",
    ),
    KeySpec(
        "{ns}:timeline:{integration}:{order}",
        "list",
        'JSON events `{"at", "event", ...}` of an order no other key keeps (provisioned, '
        "result submitted, written, failed), the last 200",
        "DISPATCHER_SEEN_RETENTION after its last event",
    ),
    KeySpec(
        "{ns}:provisioned",
        "zset",
        "order ref -> unix time its handler chain finished, until a final result is written",
        "kept until the final result (`status` reports the stale ones)",
    ),
    KeySpec(
        "{ns}:result-stats",
        "hash",
        "per integration: `<integration>|written`, `|failed`, `|latency_sum`, "
        "`|le|<bound>` (submit-to-written seconds)",
        "kept (a few fields per integration)",
    ),
    KeySpec(
        "{ns}:dispatched:{integration}:{order}",
        "hash",
        "the job's own fields as dispatched: `data` (the order as Kombo sent it, candidate "
        "data included), `description`, `meta`; what the reconciler rebuilds a lost job from. "
        "`{integration}:{order}` as in the steps key",
        "the shorter of DISPATCHER_RESULT_TTL and DISPATCHER_FAILURE_TTL after dispatch; "
        "deleted by the reconciler once the order is provisioned or failed; `forget` deletes it",
    ),
    KeySpec(
        "{ns}:reconcile",
        "hash",
        "the reconciler: `next_at` (unix time the next periodic pass is due), the last "
        "pass (`last_pass_at`, `last_duration`, `last_orders_checked`, "
        "`last_results_checked`, `last_repaired`, `last_error`), counters "
        "`reconciled|<kind>`",
        "kept (a dozen fields)",
    ),
    KeySpec(
        "{ns}:reconcile-lease",
        "string",
        "`<host>:<pid>:<id>` of the poller running the periodic reconcile pass",
        "60 s, renewed per batch, deleted after the pass",
    ),
    KeySpec(
        "{ns}:integrations",
        "set",
        "integration ids registered with `dispatcher integrations add`",
        "kept; `integrations remove`",
    ),
    KeySpec(
        "{ns}:integrations:paused",
        "set",
        "paused integration ids",
        "kept; `integrations resume`",
    ),
    KeySpec(
        "{ns}:schedule",
        "zset",
        "integration id -> unix time its next sweep is due (shared by every poller)",
        "kept; entries follow the active integrations",
    ),
    KeySpec(
        "{ns}:lease:{integration}",
        "string",
        "`<host>:<pid>:<id>` of the poller sweeping the integration",
        "DISPATCHER_LEASE_TTL, renewed per page, deleted after the sweep",
    ),
    KeySpec(
        "{ns}:step-stats",
        "hash",
        "counters `<handler>:completed`, `<handler>:failed`",
        "kept",
    ),
    KeySpec(
        "rq:queues",
        "set",
        "RQ: every queue key (`rq info` lists queues from it)",
        "kept",
    ),
    KeySpec(
        "rq:queue:{queue}",
        "list",
        "RQ: job ids waiting to run",
        "emptied by workers",
    ),
    KeySpec(
        "rq:queue:{queue}@{integration}",
        "list",
        "job ids of one integration's orders waiting for their turn (the fair feeder moves "
        "them to `rq:queue:{queue}`); registered in `rq:queues` while it holds any",
        "emptied by the feeder",
    ),
    KeySpec(
        "rq:queue:{queue}:intermediate",
        "list",
        "RQ: job ids taken by a worker but not yet started",
        "emptied by workers",
    ),
    KeySpec(
        "rq:queue:{queue}:intermediate:first_seen:{job_id}",
        "string",
        "RQ: when a job was first seen in the intermediate list",
        "1 day",
    ),
    KeySpec(
        "rq:job:{job_id}",
        "hash",
        "RQ: one order's job: payload (the order, candidate data included), status, "
        "times, description `order X integration Y package Z`, meta (ids, failures)",
        "DISPATCHER_RESULT_TTL once finished, DISPATCHER_FAILURE_TTL once failed",
    ),
    KeySpec(
        "rq:job:{result_job_id}",
        "hash",
        "RQ: one write attempt of a result (`result-` + 32 hex digits): the ids only, the "
        "body stays in the outbox hash",
        "1 hour once finished, DISPATCHER_FAILURE_TTL once failed",
    ),
    KeySpec(
        "rq:queue:{results_queue}",
        "list",
        "RQ: write jobs waiting (DISPATCHER_RESULTS_QUEUE); RQ's registries of that queue "
        "(`rq:wip:`, `rq:finished:`, `rq:failed:`, `rq:scheduled:` ...) as for the orders "
        "queue",
        "emptied by the results workers",
    ),
    KeySpec(
        "rq:job:{job_id}:dependents",
        "set",
        "RQ: jobs depending on this one (the dispatcher creates none)",
        "deleted with the job",
    ),
    KeySpec(
        "rq:results:{job_id}",
        "stream",
        "RQ: the job's results (return value: step outputs; or the failure traceback)",
        "same as the job",
    ),
    KeySpec(
        "rq:executions:{job_id}",
        "zset",
        "RQ: live executions of a job",
        "while the job runs",
    ),
    KeySpec(
        "rq:execution:{job_id}:{execution}",
        "hash",
        "RQ: one execution (worker, heartbeat)",
        "while the job runs",
    ),
    KeySpec(
        "rq:wip:{queue}",
        "zset",
        "RQ: started registry (`job_id:execution_id`)",
        "entries leave when the job ends",
    ),
    KeySpec(
        "rq:finished:{queue}",
        "zset",
        "RQ: finished job ids, scored by expiry",
        "entries pruned after DISPATCHER_RESULT_TTL",
    ),
    KeySpec(
        "rq:failed:{queue}",
        "zset",
        "RQ: failed job ids, scored by expiry",
        "entries pruned after DISPATCHER_FAILURE_TTL",
    ),
    KeySpec(
        "rq:scheduled:{queue}",
        "zset",
        "RQ: jobs waiting for a retry, scored by when",
        "entries leave when re-queued",
    ),
    KeySpec(
        "rq:deferred:{queue}",
        "zset",
        "RQ: deferred jobs (the dispatcher defers none)",
        "entries leave when enqueued",
    ),
    KeySpec(
        "rq:canceled:{queue}",
        "zset",
        "RQ: canceled jobs (`rq` cancel)",
        "entries pruned after their TTL",
    ),
    KeySpec(
        "rq:ready:{queue}",
        "zset",
        "RQ: dependents ready to enqueue (transient)",
        "transient",
    ),
    KeySpec(
        "rq:clean_registries:{queue}",
        "string",
        "RQ: lock of the periodic registry cleanup",
        "expires by itself",
    ),
    KeySpec(
        "rq:clean_groups",
        "string",
        "RQ: lock of the periodic group cleanup",
        "expires by itself",
    ),
    KeySpec(
        "rq:workers",
        "set",
        "RQ: every live worker key",
        "dead workers pruned by RQ",
    ),
    KeySpec(
        "rq:workers:{queue}",
        "set",
        "RQ: worker keys listening on the queue",
        "dead workers pruned by RQ",
    ),
    KeySpec(
        "rq:worker:{worker}",
        "hash",
        "RQ: one worker (state, heartbeat, counts)",
        "heartbeat TTL (about 7 minutes); 60 s after it stops",
    ),
    KeySpec(
        "rq:worker:{worker}:executions",
        "set",
        "RQ: executions the worker is running",
        "heartbeat TTL",
    ),
    KeySpec(
        "rq:scheduler-lock:{queue}",
        "string",
        "RQ: which worker runs the scheduler for the queue",
        "expires by itself",
    ),
    KeySpec(
        "rq:scheduler:{scheduler}",
        "hash",
        "RQ: one scheduler (a worker's scheduler process): its queues and heartbeat",
        "expires by itself",
    ),
    KeySpec(
        "rq:suspended",
        "string",
        "RQ: set by `rq suspend`",
        "until `rq resume`",
    ),
)


def schema_markdown() -> str:
    """The key table of docs/redis-keys.md, generated from :data:`SCHEMA`."""
    lines = ["| key | type | holds | lifetime |", "| --- | --- | --- | --- |"]
    for spec in SCHEMA:
        lines.append(f"| `{spec.pattern}` | {spec.type} | {spec.holds} | {spec.lifetime} |")
    return "\n".join(lines) + "\n"
