"""An example handler: greets the candidate in the vendor's CRM (here: a file)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dispatcher import BaseHandler, HandlerContext, Order, PermanentFailure


class HelloHandler(BaseHandler):
    # No `name`: the loader gives it the entry point's ("hello", in pyproject.toml).

    def __init__(self) -> None:
        # Read configuration once, at worker start: a missing setting fails the worker then,
        # not at the first order.
        self.outbox = Path(os.environ.get("HELLO_OUTBOX", "hello-outbox.jsonl"))

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        if not order.candidate.email:
            raise PermanentFailure("the order has no candidate email")
        test_url = context.outputs.get("provision_http", {}).get("test_url")
        # The idempotency key makes a repeat (after a crash) recognisable downstream.
        line = {
            "key": context.idempotency_key,
            "order": order.id,
            "integration": context.integration_id,
            "greeting": f"Hello {order.candidate.first_name or 'there'}!",
            "test_url": test_url,
            "after": sorted(context.outputs),
        }
        with self.outbox.open("a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        context.logger.info("greeted the candidate")
        return {"greeted": True}
