"""Stand-ins for the demo, the tests and the benchmarks, one copy each.

- :mod:`~dispatcher.testing.sim`: the Kombo API.
- :mod:`~dispatcher.testing.vendor`: a vendor's provisioning API (``provision_http``).
- :mod:`~dispatcher.testing.mailbox`: an SMTP server (``notify_email``); needs aiosmtpd (the
  ``demo`` and ``test`` extras), imported only when a mailbox starts.
- :mod:`~dispatcher.testing.redis_server`: a private ``redis-server`` to stop, kill, restart.
- :mod:`~dispatcher.testing.otlp`: an OTLP/HTTP trace receiver (tracing); needs the ``otel``
  extra, imported only when a receiver starts.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(below: int = 65536) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's choice, released at once),
    lower than ``below``: a Redis Cluster node also listens on its port + 10000 (its bus), so
    it needs a port below 55536, and the OS's ephemeral range reaches 60999 or more."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port
    # The OS keeps answering high ports: take one below the ephemeral range that binds.
    for port in range(below - 1, 1024, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port below {below}")
