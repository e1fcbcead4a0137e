"""Every dependency of the dispatcher on RQ's internals, in one place. Supported: rq>=3,<4
(``SUPPORTED_RQ``; pyproject.toml says the same).

RQ's public API (``Queue``, ``Job.create``/``fetch_many``, ``Worker.work``, ``Retry``...) is
used where it is needed. Listed here is what RQ does not promise to keep: its Redis layout,
which the dispatcher reads and writes directly (from Lua, so that an order is marked seen and
enqueued in one atomic step and a page costs one round trip), and the methods of RQ's
classes that the dispatcher overrides. tests/store/test_rq_internals.py checks every item against
the installed RQ and names the one that changed; after an RQ upgrade, start there.

Keys (``PREFIX`` is RQ's ``RQ_KEY_PREFIX``, ``rq`` unless set in the environment):

- ``rq:queue:<queue>`` list, job ids waiting (``Queue.key``). The dispatch script RPUSHes new
  jobs (ledger.py); the requeue scripts RPUSH recovered ones (worker/recovery.py).
- ``rq:queues`` set of queue keys (``Queue.redis_queues_keys``): the dispatch script SADDs the
  queue's key, as ``Queue.enqueue`` does, so ``rq info`` lists the queue.
- ``rq:queue:<queue>:intermediate`` list, jobs a worker popped but has not started
  (``IntermediateQueue.get_intermediate_queue_key``); ``...:first_seen:<job id>`` string, when
  a job was first seen there (``IntermediateQueue.get_first_seen_key``, set NX for a day, read
  by RQ's own cleanup, which the worker does not run). Stranded jobs are LREMmed from it and
  requeued (REQUEUE_STRANDED); a mark is set only while the job is in the list
  (MARK_FIRST_SEEN) and deleted when a worker starts the job or it is put back; forget LREMs.
- ``rq:job:<job id>`` hash (``Job.key_for``); ``rq:job:<job id>:dependents`` set
  (``Job.dependents_key_for``); ``rq:results:<job id>`` stream (``Result.get_key``),
  its entries read with ``Result.restore``; ``rq:executions:<job id>`` zset
  (``ExecutionRegistry``). Forget deletes them all.
- Registries, zsets ``rq:<kind>:<queue>`` (``<Kind>JobRegistry(...).key``): ``wip``
  (started), ``finished``, ``failed``, ``scheduled``, ``deferred``, ``canceled``. Status counts
  them; forget removes a job from each but the started one (a started job is refused).
- ``rq:workers:<queue>`` set (``worker_registration.WORKERS_BY_QUEUE_KEY``): named when status
  cannot read the workers.

Registry semantics (what the scores and members mean):

- started (``rq:wip``): members ``<job id>:<execution id>`` (``StartedJobRegistry.parse_job_id``
  splits them), scored by the unix time the job's heartbeat runs out. A score in the past is
  an abandoned job: ``requeue_abandoned`` ZREMs it and requeues the job unless the job is
  where its status says (REQUEUE_ABANDONED). RQ's ``StartedJobRegistry.cleanup`` (also run by
  the registry's ``count``/``get_job_ids``, e.g. ``rq info``) drops an expired entry whose
  job's status is not ``started``: the worker runs the rest of ``clean_registries`` without it
  (``clean_registries_but_started``); the dispatcher reads the registry with ZCARD/ZRANGE.
- finished, failed, canceled: job ids scored by their expiry (end + TTL): the live ones score
  above now, the newest failure scores highest.
- scheduled: job ids scored by the unix time they run again (``dispatcher show``'s retry at).

Job hash fields:

- the dispatch script writes exactly what RQ's ``Job.save`` would, read off ``Job.to_dict()``
  of a template job (:func:`job_hash_items`), but for ``data``, ``description`` and ``meta``
  (``JOB_OWN_FIELDS``), which it writes per order. ``data`` is the serialized
  ``(function name, instance, args, kwargs)`` tuple (``Job._deserialize_data``), stored
  uncompressed: ``Job.restore`` falls back to uncompressed data when zlib refuses it.
- ``status`` (``JobStatus`` values ``queued``, ``started``, ``scheduled``, ``failed``,
  ``finished``): the requeue scripts leave a job alone only if it is finished, or failed and in
  the failed registry, or scheduled and in the scheduled registry, or queued and in its queue
  or intermediate list (``store/lua/_rq_where.lua``; LPOS from Redis 6.0.6, an LRANGE scan before);
  otherwise they set ``queued`` and RPUSH it. forget refuses a ``started`` job.
- ``enqueued_at``, ``ended_at`` (RQ's ``utcformat``, read with ``rq.utils.str_to_date``): status
  reads the oldest queued and the newest failed job's.
- ``meta`` holds the dispatcher's own keys (order, integration, failures); RQ's field.
- ``data`` and ``meta`` are JSON (``JOB_SERIALIZER``, RQ's own ``JSONSerializer``), never
  pickles. A job read with it whose meta is not JSON keeps the raw bytes in
  ``Job._unreadable_meta`` (and ``{"unserialized": ...}`` as its meta); one whose data is not
  JSON raises ``DeserializationError`` when ``func_name`` is first read. RQ imports by name,
  and calls, the job's function (``func_name``, on ``instance`` when set) and its callbacks
  (``_success_callback_name``, ``_failure_callback_name``, ``_stopped_callback_name``) and
  posts to its ``webhooks``: :func:`job_refusal` checks all of them before a worker runs a job.

Methods of RQ's classes overridden in dispatcher/worker/ (``OVERRIDDEN``; the mixin in
``base.py``, ``InProcessWorker`` in ``classes.py``): on ``BaseWorker`` ``__init__`` (with
``job_monitoring_interval``, ``maintenance_interval``, ``worker_ttl``, ``queue_class``),
``get_heartbeat_ttl``, ``clean_registries``,
``execute_job`` (twice: the mixin and ``InProcessWorker``), ``handle_job_failure``,
``handle_job_success`` (the outcome line), ``prepare_job_execution`` (deletes the job's
first-seen mark), ``subscribe`` (the pubsub thread waits ``PUBSUB_WAIT``, not 60 s: redis-py
8.2's ``PubSubWorkerThread.stop()`` joins it), ``teardown`` and ``_shutdown`` (a SIGTERM
after the loop sets the stop flag instead of raising ``StopRequested``), ``clean_registries``
(``rq.registry.clean_registries`` but the started registry, ``clean_worker_registry``; not
the intermediate list's cleanup), ``handle_exception`` (RQ's ERROR line with the
chained traceback replaced by the outcome line; the exception handlers still run, through
``rq.job_lifecycle.call_exception_handlers``); on ``Queue`` the classmethod ``dequeue_any``
(its second argument is the timeout, ``None`` in a burst; raising ``DequeueTimeout`` makes
the worker run its heartbeat and maintenance and dequeue again). A burst that waits for
retries reads the worker's ``_stop_requested`` (set by SIGTERM/SIGINT).
``RQ_LIFECYCLE_MESSAGES`` are the format strings of RQ's ``rq.worker`` INFO lines about a
worker's life; every other INFO line of that logger is demoted to DEBUG.
``InProcessWorker`` also calls
``prepare_execution``, ``perform_job``, ``set_state`` and ``maintain_heartbeats``, as RQ's
``Worker.execute_job`` does.
``ThreadedWorker`` (worker/threaded.py, ``--threads N``) overrides ``work`` (its own loop:
one dequeue thread, N job threads), ``set_state`` (BUSY while any job is in flight),
``_shutdown`` and ``request_force_stop`` (SIGTERM: drain, then requeue; worker/threaded_stop.py),
``handle_job_success`` / ``handle_job_failure`` (dropped for a job requeued at shutdown),
``prepare_execution`` (RQ's ``rq.executions.prepare_execution`` and
``BaseWorker.prepare_job_execution`` in one transaction: ``Execution.create``,
``Job.prepare_for_execution``, PERSIST, the LREM from the intermediate list; its
``prepare_job_execution`` then does nothing) and ``handle_execution_ended`` (``ended_at``
only: RQ's extra job heartbeat covers callbacks, which the dispatcher's jobs never have); its
outcome bookkeeping (``_record_success``) is RQ's ``handle_job_success`` in one MULTI/EXEC
without the WATCH of the dependents (counted inside the transaction, moved by
``Queue.enqueue_dependents`` after it if any), calling ``increment_successful_job_count``,
``increment_total_working_time``, ``Job._handle_success``, ``Job.cleanup``,
``cleanup_execution`` and ``rq.rate_limit.release_slot`` as RQ's does. It
relies on RQ 3 keeping several executions per worker (``BaseWorker.executions``, one
started-registry member ``<job id>:<execution id>`` each, the worker's execution set), calls
``bootstrap``, ``_start_scheduler``, ``_install_signal_handlers``, ``reorder_queues``,
``heartbeat``, ``Execution.heartbeat`` and ``Job.heartbeat`` as RQ's loop and
``maintain_heartbeats`` do, and reads ``_ordered_queues``, ``_stop_requested``,
``_shutdown_requested_date`` and ``_state``.
On ``Job`` (dispatcher/worker/retry.py, ``DispatcherJob``, the job class of every worker):
``retry`` and ``_handle_retry_result`` make ``set_status`` write into the pipeline RQ passes
them (RQ writes ``status=scheduled`` at once, before the failure pipeline moves the job).
``RECOVERY_BOUND`` relies on RQ's rule that an idle worker wakes from its blocking pop every
``worker_ttl - 15`` seconds (``BaseWorker.dequeue_timeout``).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis import Redis
from rq.defaults import RQ_KEY_PREFIX
from rq.exceptions import DeserializationError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers
from rq.queue import Queue
from rq.rate_limit import RateLimitRegistry, release_slot
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ReadyJobRegistry,
    StartedJobRegistry,
)
from rq.serializers import JSONSerializer
from rq.utils import get_version

from dispatcher.store.lua import script

if TYPE_CHECKING:
    from rq.worker import BaseWorker

    # A mixin over RQ's workers is, for the type checker, the BaseWorker it is always
    # combined with (Worker, SimpleWorker): its attributes and super() calls are checked
    # against RQ's own signatures instead of being ignored.
    WorkerBase = BaseWorker
else:
    WorkerBase = object

__all__ = [
    "GONE",
    "IN_PLACE",
    "JOB_OWN_FIELDS",
    "JOB_SERIALIZER",
    "LPOS_SINCE",
    "MARK_FIRST_SEEN",
    "NO_JOB",
    "OVERRIDDEN",
    "PREFIX",
    "QUEUES_KEY",
    "REQUEUED",
    "REQUEUE_ABANDONED",
    "REQUEUE_STRANDED",
    "RETURN_POPPED",
    "RQ_CLEANED_ELSEWHERE",
    "RQ_LIFECYCLE_MESSAGES",
    "SUPPORTED_RQ",
    "WorkerBase",
    "call_exception_handlers",
    "canceled_key",
    "clean_registries_but_started",
    "deferred_key",
    "delete_job",
    "dependents_key",
    "executions_key",
    "failed_key",
    "fair_list_key",
    "finished_key",
    "first_seen",
    "first_seen_key",
    "intermediate_job_ids",
    "intermediate_key",
    "job_data",
    "job_hash_items",
    "job_key",
    "job_refusal",
    "list_search_mode",
    "mark_first_seen",
    "queue_key",
    "release_slot",
    "results_key",
    "save_meta",
    "scheduled_key",
    "started_job_id",
    "started_key",
    "unreadable_job",
    "workers_key",
]

# The RQ versions this module is written against: [from, to).
SUPPORTED_RQ = ((3,), (4,))

# (RQ class, method) pairs the dispatcher overrides; the test checks each still exists with a
# signature the override accepts.
OVERRIDDEN = (
    ("rq.worker.BaseWorker", "__init__"),
    ("rq.worker.BaseWorker", "get_heartbeat_ttl"),
    ("rq.worker.BaseWorker", "clean_registries"),
    ("rq.worker.Worker", "execute_job"),
    ("rq.worker.SimpleWorker", "execute_job"),
    ("rq.worker.BaseWorker", "handle_job_failure"),
    ("rq.worker.BaseWorker", "handle_job_success"),
    ("rq.worker.BaseWorker", "handle_exception"),
    ("rq.queue.Queue", "dequeue_any"),
    # dispatcher/worker/threaded.py (ThreadedWorker, --threads N)
    ("rq.worker.BaseWorker", "work"),
    ("rq.worker.BaseWorker", "set_state"),
    ("rq.worker.BaseWorker", "_shutdown"),
    ("rq.worker.BaseWorker", "request_force_stop"),
    ("rq.worker.BaseWorker", "handle_job_success"),
    ("rq.worker.BaseWorker", "prepare_execution"),
    ("rq.worker.BaseWorker", "handle_execution_ended"),
    ("rq.worker.BaseWorker", "_start_scheduler"),
    ("rq.worker.BaseWorker", "stop_scheduler"),
    # dispatcher/worker/scheduler.py (ThreadScheduler: RQ's scheduler in a thread)
    ("rq.scheduler.RQScheduler", "start"),
    ("rq.scheduler.RQScheduler", "_install_signal_handlers"),
    # dispatcher/worker/base.py: maintenance (recovery.py), first-seen marks, shutdown
    ("rq.worker.BaseWorker", "prepare_job_execution"),
    ("rq.worker.BaseWorker", "subscribe"),
    ("rq.worker.BaseWorker", "teardown"),
    # dispatcher/worker/retry.py (DispatcherJob: a retry's status in its pipeline)
    ("rq.job.Job", "retry"),
    ("rq.job.Job", "_handle_retry_result"),
    ("rq.job.Job", "set_status"),
)

# Prefixes of the format strings of RQ's rq.worker INFO lines about a worker's life (start,
# queues, shutdown, suspension), kept at INFO; its per-job lines go to DEBUG.
RQ_LIFECYCLE_MESSAGES = (
    "Worker %s: started with PID",
    "*** Listening on",
    "Worker %s [PID %d]: warm shut down requested",
    "Worker %s: stopping on request",
    "Worker %s: suspended",
)

# -- keys -------------------------------------------------------------------------------------

PREFIX = RQ_KEY_PREFIX
QUEUES_KEY = f"{PREFIX}:queues"


def queue_key(queue: str) -> str:
    """List of the job ids waiting on ``queue``."""
    return f"{PREFIX}:queue:{queue}"


def fair_list_key(queue: str, integration_id: str) -> str:
    """List of one integration's jobs waiting for their turn on ``queue``: an RQ queue key
    (``<queue>@<integration>``, registered in rq:queues while it holds jobs), so that
    ``rq info`` and dashboards list each integration's backlog; no worker listens on it."""
    return f"{queue_key(queue)}@{integration_id}"


def intermediate_key(queue: str) -> str:
    """List of the job ids a worker popped from ``queue`` but has not started."""
    return f"{queue_key(queue)}:intermediate"


def first_seen_key(queue: str, job_id: str) -> str:
    """String: when RQ first saw ``job_id`` in the intermediate list."""
    return f"{intermediate_key(queue)}:first_seen:{job_id}"


def job_key(job_id: str) -> str:
    """Hash of one job."""
    return f"{PREFIX}:job:{job_id}"


def dependents_key(job_id: str) -> str:
    """Set of the jobs depending on ``job_id``."""
    return f"{job_key(job_id)}:dependents"


def results_key(job_id: str) -> str:
    """Stream of a job's results."""
    return f"{PREFIX}:results:{job_id}"


def executions_key(job_id: str) -> str:
    """Zset of a job's live executions."""
    return f"{PREFIX}:executions:{job_id}"


def started_key(queue: str) -> str:
    """Started registry: ``<job id>:<execution id>`` scored by heartbeat deadline."""
    return f"{PREFIX}:wip:{queue}"


def finished_key(queue: str) -> str:
    """Finished registry: job ids scored by expiry."""
    return f"{PREFIX}:finished:{queue}"


def failed_key(queue: str) -> str:
    """Failed registry: job ids scored by expiry."""
    return f"{PREFIX}:failed:{queue}"


def scheduled_key(queue: str) -> str:
    """Scheduled registry: job ids scored by when they run again."""
    return f"{PREFIX}:scheduled:{queue}"


def deferred_key(queue: str) -> str:
    """Deferred registry (the dispatcher defers none)."""
    return f"{PREFIX}:deferred:{queue}"


def canceled_key(queue: str) -> str:
    """Canceled registry: job ids scored by expiry."""
    return f"{PREFIX}:canceled:{queue}"


def workers_key(queue: str) -> str:
    """Set of the worker keys listening on ``queue``."""
    return f"{PREFIX}:workers:{queue}"


def started_job_id(entry: bytes | str) -> str:
    """The job id of a started-registry member (``<job id>:<execution id>``)."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    return StartedJobRegistry.parse_job_id(text)


# -- the intermediate list's first-seen marks (shared with RQ's own cleanup) --------------------


def intermediate_job_ids(connection: Redis, queue: str) -> list[str]:
    """The job ids in the intermediate list of ``queue``."""
    return _intermediate(connection, queue).get_job_ids()


def first_seen(connection: Redis, queue: str, job_id: str) -> datetime | None:
    """When RQ (or we) first saw ``job_id`` popped but not started; None if not marked."""
    return _intermediate(connection, queue).get_first_seen(job_id)


def mark_first_seen(connection: Redis, queue: str, job_id: str) -> None:
    """Mark ``job_id`` first seen now, as RQ's cleanup does (kept if already set)."""
    _intermediate(connection, queue).set_first_seen(job_id)


def _intermediate(connection: Redis, queue: str) -> IntermediateQueue:
    return IntermediateQueue(queue_key(queue), connection)


# -- RQ's registry cleanup, but for the started registry ----------------------------------------

# What rq.registry.clean_registries cleans that the worker's maintenance does instead:
# StartedJobRegistry.cleanup drops every expired entry whose job's status is not 'started'
# (a job whose status was written but not its registry move: lost), and the intermediate
# list's cleanup (BaseWorker.clean_registries) marks first sightings unconditionally and fails
# a job seen there a minute after a mark that may be left from an earlier visit.
# requeue_abandoned and requeue_stranded (worker/recovery.py) decide by where the job is instead.
RQ_CLEANED_ELSEWHERE = ("StartedJobRegistry", "intermediate_queue")
_CLEANED_HERE = (FinishedJobRegistry, FailedJobRegistry, DeferredJobRegistry, ReadyJobRegistry)


def clean_registries_but_started(queue: Queue) -> None:
    """``rq.registry.clean_registries(queue)`` without the started registry's cleanup (see
    ``RQ_CLEANED_ELSEWHERE``); tests/store/test_rq_internals.py checks it cleans the rest of what
    RQ's does."""
    for registry in _CLEANED_HERE:
        registry(
            name=queue.name,
            connection=queue.connection,
            job_class=queue.job_class,
            serializer=queue.serializer,
        ).cleanup()
    for rate_limit_registry in RateLimitRegistry.all(queue.connection):
        rate_limit_registry.cleanup()


# -- job hashes ---------------------------------------------------------------------------------

# The job-hash fields that differ between the jobs of a page (see Ledger._job_hashes).
JOB_OWN_FIELDS = frozenset({"data", "description", "meta"})

# The serializer of every job's data and meta, passed explicitly wherever the dispatcher
# creates, reads or runs a job (Job.create/fetch, Queue, workers, Result.restore). RQ's
# default is pickle, and loading a pickle runs whatever its writer chose: a job or failed job
# planted by anyone who can write Redis ran code in the worker, in `dispatcher failed` and in
# the console. RQ's own class, so that `rq ... --serializer json` and rq-dashboard read ours.
JOB_SERIALIZER = JSONSerializer

# What jobs of the dispatcher before JSON jobs start with: pickle's PROTO opcode (protocol 2
# and up, RQ's default is the highest). JSON text never starts with this byte.
_PICKLE_START = b"\x80"


def job_refusal(job: Job, functions: Collection[str]) -> str | None:
    """Why a worker must not run ``job`` (fetched with ``JOB_SERIALIZER``), or None.

    Nothing is unpickled or imported to decide: the job's data and meta must be JSON, its
    function one of ``functions`` (RQ imports whatever name the data holds and calls it with
    the data's arguments), called on no instance, with no callbacks (imported by name too) and
    no webhooks (RQ posts to them). The answer is one clause naming what is wrong.
    """
    unreadable = unreadable_job(job)
    if unreadable is not None:
        return unreadable
    function, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    if function not in functions or instance is not None:
        shown = function if isinstance(function, str) else type(function).__name__
        return f"it calls {shown[:120]!r}, not a job function of the dispatcher"
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "its data is not a job of the dispatcher (arguments of the wrong type)"
    callbacks = (
        job._success_callback_name,
        job._failure_callback_name,
        job._stopped_callback_name,
    )
    if any(callbacks) or job.webhooks:
        return "it names callbacks or webhooks, which the dispatcher never sets"
    return None


def unreadable_job(job: Job) -> str | None:
    """Why ``job`` (fetched with ``JOB_SERIALIZER``) cannot be read, its data or its meta not
    being JSON, or None. Reads the data with the job's serializer, never with pickle."""
    if job.serializer is not JOB_SERIALIZER:  # a caller's slip: nothing is read then
        return "it was fetched with another serializer than JOB_SERIALIZER, not read"
    unreadable_meta: bytes | None = getattr(job, "_unreadable_meta", None)
    if unreadable_meta is not None:
        return f"its meta {_not_json(unreadable_meta)}"
    try:
        job.func_name  # noqa: B018  # RQ parses the data when it is first read
    except DeserializationError:
        return f"its data {_not_json(job.data)}"
    return None


def _not_json(value: bytes) -> str:
    if value.startswith(_PICKLE_START):
        return "is a pickle (a job queued by a dispatcher before JSON jobs), never loaded"
    return "is not JSON"


def job_hash_items(job: Job) -> list[Any]:
    """The hash RQ writes in ``Job.save()``, as HSET field/value items; RQ's own unique
    enqueue (rq/scripts.py) passes it to Lua the same way."""
    items: list[Any] = []
    for key, value in job.to_dict().items():
        if value is None:
            continue
        items.append(key)
        items.append(value if isinstance(value, bytes | str) else str(value))
    return items


def job_data(dumps: Any, function: str, kwargs: dict[str, Any]) -> bytes:
    """A job's ``data`` field: the serialized (function, instance, args, kwargs), uncompressed
    (``Job.to_dict`` zlibs it; compressing 1 KB costs more than the rest of the job, RQ reads
    uncompressed data as such and compresses it when it saves the job at the end)."""
    data: bytes = dumps((function, None, (), kwargs))
    return data


def save_meta(job: Job) -> None:
    """``Job.save_meta()``, which RQ leaves unannotated."""
    job.save_meta()  # type: ignore[no-untyped-call]


def delete_job(pipe: Any, queue: str, job_id: str) -> None:
    """Queue on ``pipe`` the removal of every place RQ may hold a job that is not running: the
    queue (and its intermediate list), each registry, the job hash, its dependents, its
    results stream and its execution registry."""
    pipe.lrem(queue_key(queue), 0, job_id)
    pipe.lrem(intermediate_key(queue), 0, job_id)
    for registry in (finished_key, failed_key, scheduled_key, deferred_key, canceled_key):
        pipe.zrem(registry(queue), job_id)
    pipe.delete(
        job_key(job_id), dependents_key(job_id), results_key(job_id), executions_key(job_id)
    )


# -- Lua that writes RQ's structures ------------------------------------------------------------

# Enqueueing as Queue.enqueue does (Job.save, then Queue.push_job_id, and the queue registered
# in rq:queues) is dispatcher/store/lua/_rq_enqueue.lua's (for the dispatch script); whether a
# job is where its status says, dispatcher/store/lua/_rq_where.lua's (for the requeue scripts).

# Redis's LPOS (6.0.6) finds a job id in a list in C; before it, the scripts scan the list
# in LRANGE pages of 1,000 (Redis >= 5.0 is supported, connection.MIN_REDIS_VERSION). Either
# is linear in the list, and runs only for a job found abandoned or stranded.
LPOS_SINCE = (6, 0, 6)


def list_search_mode(connection: Redis) -> str:
    """ARGV flag of the requeue scripts: ``lpos`` on a Redis that has it, else ``scan``."""
    return "lpos" if get_version(connection) >= LPOS_SINCE else "scan"


# Answers of the requeue scripts: the entry was already gone (another worker took it), the
# job was put back, it was where its status says, or it has no job hash (nothing to run: RQ
# would pop the id and drop it into the intermediate list again; only the ledger, which has
# the order, can dispatch it anew).
GONE, REQUEUED, IN_PLACE, NO_JOB = 0, 1, 2, 3

# The requeue scripts (worker/recovery.py), their KEYS and ARGV in their files.
REQUEUE_ABANDONED = script("rq_requeue_abandoned")
REQUEUE_STRANDED = script("rq_requeue_stranded")
RETURN_POPPED = script("rq_return_popped")
MARK_FIRST_SEEN = script("rq_mark_first_seen")
