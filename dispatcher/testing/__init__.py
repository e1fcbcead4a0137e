"""Stand-ins for the demo, the tests and the benchmarks, one copy each.

- :mod:`~dispatcher.testing.simulator`: the Kombo API.
- :mod:`~dispatcher.testing.vendor`: a vendor's provisioning API (``provision_http``).
- :mod:`~dispatcher.testing.mailbox`: an SMTP server (``notify_email``); needs aiosmtpd (the
  ``demo`` and ``test`` extras), imported only when a mailbox starts.
- :mod:`~dispatcher.testing.redis_server`: a private ``redis-server`` to stop, kill, restart.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the OS's choice, released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
