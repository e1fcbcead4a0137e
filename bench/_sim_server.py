"""The simulator on a real socket, in its own process, for the benchmarks.

    python bench/_sim_server.py --integrations 1000 --orders 250 --latency 0.02

Prints one JSON line ``{"url": ..., "integration_ids": [...]}`` once it listens, then serves
until its stdin is closed (so it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import json
import sys

from dispatcher.testing.sim import Faults, Simulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--integrations", type=int, required=True)
    parser.add_argument("--orders", type=int, required=True, help="OPEN orders per integration")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--lazy", action="store_true", help="generate each integration's orders on first access"
    )
    args = parser.parse_args()
    sim = Simulator(
        args.integrations,
        args.orders,
        seed=args.seed,
        faults=Faults(latency=args.latency),
        # Kombo renders pages on its own servers: here, each order is rendered once and
        # kept, so the simulator takes little of the CPU the poller is measured on.
        keep_rendered=not args.lazy,
    )
    if not args.lazy:
        sim.generate_all()  # generation is not what the benchmarks measure
    with sim.serve() as server:
        print(json.dumps({"url": server.url, "integration_ids": sim.integration_ids}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
