"""``log``: writes one line per order. The default handler, and the smallest example."""

from __future__ import annotations

from typing import Any

from dispatcher import BaseHandler, HandlerContext, Order


class LogHandler(BaseHandler):
    """Logs the order and returns a summary, which later handlers can read."""

    name = "log"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        context.logger.info(
            "order %s for package %s (job %s)",
            order.id,
            order.package_id,
            order.job.name or "?",
        )
        return {"package_id": order.package_id, "hiring_team": len(order.job.hiring_team)}
