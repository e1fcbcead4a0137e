"""Run every benchmark and write one markdown table of medians, ratios and targets.

    python bench/run_all.py [--smoke] [--only ingest,dispatch] [--output bench/results/latest.md]

Each benchmark runs in its own process (with its own private redis-server and simulator) at
the sizes below, writes its rows as JSON, and the table goes to stdout and to ``--output``.
``--smoke`` runs every benchmark at tiny sizes (what tests/project/test_bench_smoke.py checks): the
figures mean nothing then, only that the suite still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _support import BENCH_DIR, Row, dependency_versions, fmt

RESULTS = BENCH_DIR / "results" / "latest.md"
COMMAND = "python bench/run_all.py"


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its sizes: for the real run, and for the smoke test."""

    name: str
    script: str
    args: tuple[str, ...]
    smoke: tuple[str, ...]


BENCHES = (
    Bench("ingest", "ingest.py", ("--reps", "5"),
          ("--integrations", "2", "--orders", "20", "--reps", "1")),
    Bench("resweep", "resweep.py", ("--reps", "5"),
          ("--integrations", "2", "--orders", "30", "--reps", "1")),
    Bench("full_sweep", "full_sweep.py", ("--reps", "2"),
          ("--integrations", "6", "--orders", "10,3", "--latency", "0.005",
           "--concurrency", "4", "--baseline-integrations", "2,4", "--reps", "1")),
    Bench("dispatch", "dispatch.py", ("--reps", "3"),
          ("--processes", "2", "--orders", "4", "--baseline-orders", "2", "--delay", "0.01",
           "--threads", "4", "--reps", "1")),
    Bench("fairness", "fairness.py", (),
          ("--burst", "40", "--seconds", "0.05", "--processes", "1", "--threads", "4",
           "--late", "10", "--every", "0.05")),
    Bench("seen_memory", "seen_memory.py", ("--orders", "100000"),
          ("--orders", "300",)),
    Bench("poller_rss", "poller_rss.py", ("--orders", "100000,1000000"),
          ("--orders", "200,400", "--per-integration", "100")),
    Bench("console_render", "console_render.py", ("--integrations", "1000", "--reps", "15"),
          ("--integrations", "20", "--reps", "1")),
    Bench("results_writeback", "results_writeback.py", ("--reps", "3"),
          ("--results", "20", "--integrations", "2", "--processes", "2",
           "--baseline-results", "5", "--reps", "1")),
    Bench("replica_ack", "replica_ack.py", ("--reps", "5"),
          ("--integrations", "2", "--orders", "20", "--reps", "1")),
    Bench("reconcile", "reconcile.py", ("--orders", "100000", "--reps", "3"),
          ("--orders", "300", "--baseline-orders", "50", "--reps", "1")),
    Bench("tracing", "tracing.py", ("--reps", "5"), ("--orders", "500", "--reps", "1")),
)  # fmt: skip

# The webhook benchmark is written by the webhook receiver's author; it prints one JSON object
# (``--json``) rather than rows. Until it is merged its row says so.
WEBHOOK = Bench(
    "webhook_latency",
    "webhook_latency.py",
    ("--json",),
    ("--deliveries", "60", "--warmup", "10", "--json"),
)
_WEBHOOK_MEASURE = "webhook to enqueued, p99 under 50 concurrent deliveries"


def _run_rows(bench: Bench, smoke: bool) -> tuple[list[Row], float, str]:
    """Run one benchmark; return its rows, its duration and its output."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        json_path = Path(tmp) / "rows.json"
        args = list(bench.smoke if smoke else bench.args)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(BENCH_DIR / bench.script), *args, "--json", str(json_path)],
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        output = proc.stdout + proc.stderr
        if proc.returncode != 0 or not json_path.exists():
            error = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            row = Row(bench.name, "FAILED", None, "", detail=f"exit {proc.returncode}: {error[0]}")
            return [row], elapsed, output
        rows = [Row(**raw) for raw in json.loads(json_path.read_text())]
    return rows, elapsed, output


def _run_webhook(smoke: bool) -> tuple[list[Row], float, str]:
    script = BENCH_DIR / WEBHOOK.script
    if not script.exists():
        row = Row(
            WEBHOOK.name,
            _WEBHOOK_MEASURE,
            None,
            "ms",
            target="p99 <= 100 ms",
            detail="not run: bench/webhook_latency.py (the webhook receiver's) is not merged yet",
        )
        return [row], 0.0, ""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), *(WEBHOOK.smoke if smoke else WEBHOOK.args)],
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    output = proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        error = (proc.stderr.strip() or "no output").splitlines()[-1]
        return [Row(WEBHOOK.name, "FAILED", None, "", detail=error)], elapsed, output
    parsed: Any = json.loads(lines[-1])
    # Side by side (a list): unconfirmed (the baseline), then confirmed with Kombo.
    base: dict[str, Any] | None = parsed[0] if isinstance(parsed, list) else None
    figures: dict[str, Any] = parsed[-1] if isinstance(parsed, list) else parsed
    p99 = float(figures["p99_ms"])
    base_p99 = float(base["p99_ms"]) if base else None
    row = Row(
        WEBHOOK.name,
        f"webhook to enqueued, p99 under {figures.get('concurrency', '?')} concurrent deliveries"
        + (", each order confirmed with Kombo" if figures.get("confirm") else ""),
        p99,
        "ms",
        baseline="unconfirmed" if base else "",
        baseline_value=base_p99,
        ratio=round(base_p99 / p99, 2) if base_p99 else None,
        target="p99 <= 100 ms",
        met=p99 <= 100,
        detail=(
            f"{figures.get('deliveries')} deliveries, {figures.get('sender')} sender, "
            f"p50 {figures.get('p50_ms')} ms, max {figures.get('max_ms')} ms, "
            f"{figures.get('per_second')}/s, "
            f"{figures.get('kombo_requests_per_1000_orders', 0)} Kombo requests per 1,000 orders"
        ),
    )
    return [row], elapsed, output


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{fmt(value)} {unit}".rstrip()


def render(rows: list[Row], *, minutes: float, smoke: bool) -> str:
    """The markdown report: machine, command, then one table row per measured figure."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{COMMAND}"
        + (" --smoke`" if smoke else "`")
        + f" ({minutes:.1f} min): {os.cpu_count()} CPUs, {dependency_versions()}, "
        f"load average {load} at the end.",
        "",
        "| benchmark | measure | dispatcher (median) | baseline (median) | ratio | target | met? |",
        "| --- | --- | ---: | ---: | ---: | --- | :---: |",
    ]
    for row in rows:
        baseline = f"{_cell(row.baseline_value, row.unit)} ({row.baseline})" if row.baseline else ""
        ratio = "" if row.ratio is None else f"{fmt(row.ratio)}x"
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        lines.append(
            f"| {row.bench} | {row.measure} | {_cell(row.value, row.unit)} | {baseline} | "
            f"{ratio} | {row.target} | {met} |"
        )
    lines += ["", "Details:", ""]
    seen: set[tuple[str, str]] = set()
    for row in rows:
        if row.detail and (row.bench, row.detail) not in seen:
            seen.add((row.bench, row.detail))
            lines.append(f"- **{row.bench}**, {row.measure}: {row.detail}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still run?")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--smoke-sizes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke_sizes:  # for tests/project/test_bench_smoke.py: one source of the tiny sizes
        print(json.dumps({bench.script: list(bench.smoke) for bench in BENCHES}))
        return
    wanted = set(args.only.split(",")) if args.only else None
    started = time.monotonic()
    rows: list[Row] = []
    failed = False
    for bench in (*BENCHES, WEBHOOK):
        if wanted is not None and bench.name not in wanted:
            continue
        print(f"bench: {bench.name} ...", file=sys.stderr, flush=True)
        if bench is WEBHOOK:
            got, elapsed, output = _run_webhook(args.smoke)
        else:
            got, elapsed, output = _run_rows(bench, args.smoke)
        if any(row.measure == "FAILED" for row in got):
            failed = True
            print(output, file=sys.stderr)
        print(f"bench: {bench.name} took {elapsed:.0f} s", file=sys.stderr, flush=True)
        rows.extend(got)
    table = render(rows, minutes=(time.monotonic() - started) / 60, smoke=args.smoke)
    print(table, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
