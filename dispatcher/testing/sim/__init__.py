"""A fake Kombo assessment API for the demo, the tests and the benchmarks.

The simulator answers the endpoints of the Kombo assessment API that the dispatcher uses:
get orders (current and deprecated), write a result back, and put/get the package list,
with Kombo's error envelope and codes. It is usable in process through an httpx
transport (:meth:`Simulator.transport`) or over a real socket (:meth:`Simulator.serve`).

Generated data is deterministic for a seed and deliberately awkward: nullable fields are
sometimes null, names carry unicode and the odd bit of HTML, and about one order in twenty
carries schema drift (an unknown field or an unknown hiring-team role) that a tolerant
client must accept (``schema_drift=False``, ``sim --no-schema-drift``: none, for clients
such as Kombo's official SDK that reject it; the orders are otherwise the same). Faults
(429, 500, truncated bodies, latency) can be forced one by one with
:meth:`Simulator.fail_next` or drawn at random with the :class:`Faults` probabilities.

Its rooms: :mod:`.api` (the :class:`Simulator`: state, auth, routes, endpoints),
:mod:`.data` (generated orders), :mod:`.cursors` (query parameters, cursors, paging),
:mod:`.bodies` (what a result or package body must hold: a result by the dispatcher's own
:mod:`dispatcher.kombo.results` rules), :mod:`.faults`, :mod:`.envelope` (Kombo's error
envelope) and :mod:`.server` (the socket).
"""

from dispatcher.testing.sim.api import DEFAULT_API_KEY, Simulator
from dispatcher.testing.sim.faults import Faults
from dispatcher.testing.sim.server import SimulatorServer

__all__ = ["DEFAULT_API_KEY", "Faults", "Simulator", "SimulatorServer"]
