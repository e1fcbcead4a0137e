"""The operator console (``dispatcher web`` at ``/`` when ``DISPATCHER_CONSOLE_TOKEN`` is
set): problems, queues, workers and a 24-hour chart; integrations with Pause / Resume;
failed jobs with Retry; one order's timeline. Needs the ``web`` extra (Starlette, Jinja2).

:func:`console_routes` gives the routes; ``dispatcher.web.app.create_app`` mounts them.
"""

from __future__ import annotations

from dispatcher.web.console.routes import SECURITY_HEADERS, console_routes

__all__ = ["SECURITY_HEADERS", "console_routes"]
