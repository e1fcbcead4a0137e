"""An OTLP/HTTP trace sink for the tracing overhead runs: answers every export, counts spans.

    python bench/_otlp_sink.py [--port 4318]

Point a run at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``; it prints the
spans received so far every 10 s and when stopped (Ctrl-C, SIGTERM). Decoding needs the
``otel`` extra (opentelemetry-proto).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from dispatcher.testing.otlp import OtlpReceiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    receiver = OtlpReceiver(args.port, keep=False)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with contextlib.suppress(KeyboardInterrupt):
        while not stopped.wait(10):
            print(f"spans received: {receiver.count}", flush=True)
    receiver.close()
    print(f"spans received: {receiver.count}", flush=True)


if __name__ == "__main__":
    main()
