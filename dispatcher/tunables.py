"""Tuning values that more than one module uses, each defined once, each with why it is what it
is.

A value one module owns stays in that module, beside what it tunes: the worker's heartbeat
timings in worker/base.py, the results writer's backoff in worker/results.py, the Redis
timeouts per kind of process in store/connection.py. Here are:

- the clamp of a doubling backoff's exponent, which every such backoff needs;
- the defaults of settings that classes also take as keyword defaults (tests, the demo and
  library callers build them without settings): settings.py and the class name the same
  constant, so the documented default and the class's cannot drift apart.
"""

from __future__ import annotations

# -- backoff ---------------------------------------------------------------------------------

# A delay that doubles per failure is ``first * 2.0 ** n``: from n = 1024 that raises
# OverflowError, so n is clamped. 2 ** 16 is 65,536 first delays: past every cap it meets
# (30 s and 5 min from 1 s; DISPATCHER_BACKOFF_CAP from DISPATCHER_POLL_INTERVAL, unless the
# cap is set above 65,536 intervals), so the clamp only keeps the number finite.
BACKOFF_MAX_EXPONENT = 16

# -- the sweep (DISPATCHER_* settings of the poller; poller.SweepPolicy, Poller, Schedule) ----

# DISPATCHER_POLL_INTERVAL: a new order is found within about a minute, at one listing per
# integration a minute.
POLL_INTERVAL = 60.0
# DISPATCHER_FULL_SWEEP_INTERVAL: hourly, a sweep lists every OPEN order: it finds what an
# incremental sweep cannot (an order listed later than its created_at overlap allows) and
# renews the marks pruning goes by, at one full listing per integration an hour.
FULL_SWEEP_INTERVAL = 3600.0
# DISPATCHER_INCREMENTAL_OVERLAP: an incremental sweep asks again for ten minutes before the
# last one's start, for orders Kombo lists a little after their created_at.
INCREMENTAL_OVERLAP = 600.0
# DISPATCHER_BACKOFF_CAP: an integration that keeps failing is still tried every 15 min, so
# it is swept soon after it is fixed, at four requests an hour while broken.
SWEEP_BACKOFF_CAP = 900.0
# DISPATCHER_PRUNE_AFTER_SWEEPS: an order is forgotten only once missing from three full
# sweeps: one listing that left it out is not enough.
PRUNE_AFTER_SWEEPS = 3
# DISPATCHER_SEEN_RETENTION: a remembered order id and an order's timeline are kept a month
# (about 85 bytes an id): an order listed again within it is not dispatched twice.
SEEN_RETENTION = 30 * 24 * 3600.0
# DISPATCHER_LEASE_TTL: a poller's lease on an integration, renewed every page: a dead
# poller's integrations are swept by another within half a minute.
LEASE_TTL = 30.0
# Kombo's largest page of orders: DISPATCHER_PAGE_SIZE's upper bound, and its default (the
# fewest requests per sweep).
KOMBO_PAGE_SIZE_MAX = 250
# DISPATCHER_SWEEP_CONCURRENCY: integrations one poller sweeps at once (threads: a sweep
# mostly waits on Kombo).
SWEEP_CONCURRENCY = 8

# -- what RQ keeps of a job (DISPATCHER_RESULT_TTL, DISPATCHER_FAILURE_TTL; job_options.JobOptions)

# A finished job holds the order, candidate data included: kept a week to look into what was
# done, not longer (personal data).
RESULT_TTL = 7 * 24 * 3600
# A failed job is kept a month: time to notice it, fix the cause and retry it.
FAILURE_TTL = 30 * 24 * 3600

# -- Kombo ---------------------------------------------------------------------------------

# KOMBO_TIMEOUT: how long one request to Kombo may take: half a minute, generous for a page
# or a result's PUT, and a hung connection ends well within one poll interval. A write
# slot's lease (worker/results.py) outlives it.
KOMBO_TIMEOUT = 30.0

# -- result writes (worker/results.py) -------------------------------------------------------

# DISPATCHER_RESULT_RETRY_FOR: a result's write is retried for a day, through a Kombo outage
# or a long rate limit; one still failing after that is failed, for a person to look at.
RESULT_RETRY_FOR = 24 * 3600.0

# The fair feeder (dispatcher.store.fair): how many jobs it keeps on the worker queue. An order
# of another integration waits behind at most this many (plus one turn of the ring): small
# against the threads of a fleet, large enough that no worker waits for the feeder.
FAIR_WINDOW = 16
# Lease of a capped integration's order fed to the worker queue, not started yet; and of a
# running one, renewed by its heartbeat (every HEARTBEAT_INTERVAL = 5 s): it outlives a
# missed beat and the grace before a dead worker's job is requeued (10 s).
QUEUED_LEASE_TTL = 300.0
RUNNING_LEASE_TTL = 30.0
