"""The Kombo webhook receiver: ``POST /webhooks/kombo`` (needs the ``web`` extra).

Kombo pushes every new order as an ``assessment:order-received`` (or
``inline-assessment:order-received``) event. The receiver checks ``X-Kombo-Signature`` over
the raw body and parses the event (dispatcher/web/kombo_delivery.py), may reject the order at
the door, confirms it OPEN with Kombo (dispatcher/web/confirm.py: a replayed delivery of an
order Kombo completed dispatches nothing) and hands it to
:meth:`Ledger.dispatch <dispatcher.store.ledger.Ledger.dispatch>`: the same atomic
dedupe-and-enqueue step the poller uses, so an order that arrives by webhook and by polling
is dispatched once. The handlers run later, in a worker; the answer does not
wait for them. The body's deadline and budget are the app's (dispatcher/web/bodies.py).

========  ===================================================================================
answer    when
========  ===================================================================================
200       order enqueued; order already seen (a replay, or the poller was first); order not
          OPEN at Kombo (``not_open``: a replay, recorded on its timeline); order kept to
          confirm with Kombo later (``unconfirmed``); any other event type (ignored)
400       body not JSON (or not UTF-8, or holding a lone surrogate such as ``"\ud800"``), or
          the event or its order fails validation (``{"message": ...}``)
401       ``X-Kombo-Signature`` missing or wrong; nothing is read further
408       body not complete within ``DISPATCHER_WEB_BODY_TIMEOUT`` of the headers
413       body over 1 MiB (refused from ``Content-Length``, or counted while streaming)
422       order rejected: its package is not in ``DISPATCHER_ACCEPTED_PACKAGES`` or a handler's
          ``accepts`` refused it; ``{"message": ...}`` is shown in the ATS and the order is
          remembered as rejected, so polling never dispatches it
503       Redis unreachable: Kombo keeps the order OPEN and polling picks it up later; or
          the bodies being read hold ``DISPATCHER_WEB_BODY_BUDGET`` bytes
========  ===================================================================================
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from pydantic import SecretStr
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dispatcher import tracing, tunables
from dispatcher.kombo.models import Order, OrderStatus
from dispatcher.logs import escape_controls
from dispatcher.plugins import Acceptor, load_acceptors
from dispatcher.settings import Settings
from dispatcher.store.ledger import Ledger
from dispatcher.web.confirm import (
    GIVE_UP_AFTER,
    NOT_LISTED,
    RETRY_CAP,
    RETRY_EVERY,
    Answer,
    Confirmer,
    Pending,
    UnconfirmedOrders,
    record_event,
)
from dispatcher.web.kombo_delivery import (
    INLINE_ORDER_EVENT,
    MAX_BODY_BYTES,
    ORDER_EVENTS,
    SIGNATURE_HEADER,
    BodyTooLarge,
    Event,
    InvalidEvent,
    new_mac,
    parse_delivered_order,
    parse_event,
    read_body,
    signature_matches,
)

__all__ = ["WEBHOOK_PATH", "WebhookReceiver", "webhook_receiver", "webhook_routes"]

log = logging.getLogger("dispatcher.webhook")

WEBHOOK_PATH = "/webhooks/kombo"


def webhook_routes(
    settings: Settings,
    ledger: Ledger,
    *,
    acceptors: Sequence[Acceptor] | None = None,
) -> list[Route]:
    """The receiver's routes (``POST /webhooks/kombo``), to mount in the web app (see
    :func:`webhook_receiver`; without its :meth:`~WebhookReceiver.confirm_later` task,
    orders Kombo could not confirm wait in Redis for a ``dispatcher web`` that runs it)."""
    return webhook_receiver(settings, ledger, acceptors=acceptors).routes


def webhook_receiver(
    settings: Settings,
    ledger: Ledger,
    *,
    acceptors: Sequence[Acceptor] | None = None,
    confirmer: Confirmer | Literal["settings"] | None = "settings",
) -> WebhookReceiver:
    """The receiver: its routes, and the task that confirms kept orders later.

    Raises ConfigError naming ``KOMBO_WEBHOOK_SECRET`` when it is not set, or
    ``KOMBO_API_KEY`` when orders are to be confirmed (``DISPATCHER_WEBHOOK_CONFIRM``, on by
    default) without it. ``acceptors`` default to the ``accepts`` checks of the configured
    handler chain: only the handlers whose class defines ``accepts`` are created (see
    ``plugins.load_acceptors``); a missing or broken one raises HandlerConfigError, as a
    worker would at start. ``confirmer`` defaults to the one the settings describe.
    """
    secret = settings.require_webhook_secret()
    if confirmer == "settings":
        confirmer = Confirmer.from_settings(settings)
    if acceptors is None:
        acceptors = load_acceptors(settings.handlers)
    return WebhookReceiver(
        secret=secret,
        ledger=ledger,
        accepted_packages=frozenset(settings.accepted_packages),
        acceptors=tuple(acceptors),
        inline_url=settings.inline_assessment_url,
        confirmer=confirmer,
        timeline_ttl=int(settings.seen_retention),
    )


@dataclass(frozen=True, slots=True)
class _Outcome:
    # not_open: Kombo lists the order with another status (a replay): not dispatched.
    # unconfirmed: Kombo could not say; kept in Redis and confirmed later.
    kind: Literal["enqueued", "already_seen", "rejected", "not_open", "unconfirmed"]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Pending:
    integration_id: str
    order: Order
    event_id: str
    future: asyncio.Future[_Outcome]
    trace: Any = None  # the delivery's span context (tracing on): its order's dispatch joins it


# One order to admit: its integration, the order, the delivery's event id.
_Item = tuple[str, Order, str]


# Orders admitted in one batch at most: Kombo's page size, the size the ledger is built for.
_MAX_BATCH = 250
# Batches admitted at once: with confirmation a batch waits on Kombo, then on Redis; a second
# batch overlaps the first's wait instead of queueing behind it.
_MAX_DRAINS = 2

# Strong references to running drain tasks: the event loop keeps only weak ones.
_TASKS: set[asyncio.Task[None]] = set()


def _background(coroutine: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


class WebhookReceiver:
    """Answers deliveries; admits their orders in batches (see :meth:`_admit`), each
    confirmed OPEN with Kombo first when a confirmer is given (dispatcher/web/confirm.py)."""

    def __init__(
        self,
        *,
        secret: SecretStr,
        ledger: Ledger,
        accepted_packages: frozenset[str],
        acceptors: tuple[Acceptor, ...],
        inline_url: str | None,
        confirmer: Confirmer | None = None,
        timeline_ttl: int = int(tunables.SEEN_RETENTION),
    ) -> None:
        self.secret = secret
        self.confirmer = confirmer
        self.unconfirmed = UnconfirmedOrders(ledger.redis, ledger.keys)
        self.timeline_ttl = timeline_ttl
        self.routes = [Route(WEBHOOK_PATH, self.receive, methods=["POST"], name="kombo_webhook")]
        self.ledger = ledger
        self.accepted_packages = accepted_packages
        self.acceptors = acceptors
        self.inline_url = inline_url
        self._pending: list[_Pending] = []
        self._drains = 0

    @tracing.server_span("POST " + WEBHOOK_PATH)  # the order's trace starts here
    async def receive(self, request: Request) -> Response:
        """Answer one delivery (see the module docstring for the answers)."""
        started = time.perf_counter()
        body = await self._signed_body(request)
        if isinstance(body, Response):
            return body
        try:
            event = parse_event(body)
        except InvalidEvent as exc:
            log.warning("webhook refused: %s", exc)
            return _message(400, str(exc))
        if event.type not in ORDER_EVENTS:
            log.info("webhook %s: event type %s ignored", event.id, event.type)
            return JSONResponse({"status": "ignored"})
        try:
            integration_id, order = parse_delivered_order(event.data)
        except InvalidEvent as exc:
            log.warning("webhook %s refused: %s", event.id, exc)
            return _message(400, f"event {event.id}: {exc}")
        extra = {"order_id": order.id, "integration_id": integration_id}
        if order.status not in (None, OrderStatus.OPEN):
            log.info(
                "webhook %s: order is %s, not OPEN: ignored", event.id, order.status, extra=extra
            )
            return JSONResponse({"status": "ignored"})
        try:
            outcome = await self._admit(integration_id, order, event.id)
        except RedisError as exc:
            log.error("webhook %s: redis: %s: %s", event.id, type(exc).__name__, exc, extra=extra)
            return _message(503, "the dispatcher cannot reach its store; retry later")
        elapsed_ms = (time.perf_counter() - started) * 1000
        if outcome.kind == "rejected":
            log.info(
                "webhook %s: order rejected (%.1f ms): %s",
                event.id,
                elapsed_ms,
                outcome.reason,
                extra=extra,
            )
            return _message(422, outcome.reason or "rejected")
        log.info("webhook %s: order %s (%.1f ms)", event.id, outcome.kind, elapsed_ms, extra=extra)
        answer: dict[str, str] = {"status": outcome.kind, "order_id": order.id}
        if outcome.kind == "not_open" and outcome.reason:
            answer["kombo_status"] = outcome.reason
        if event.type == INLINE_ORDER_EVENT and outcome.kind != "not_open":
            answer.update(self._inline_answer(event, integration_id, order))
        return JSONResponse(answer)

    async def _signed_body(self, request: Request) -> bytes | Response:
        """The body if it is small enough and signed by Kombo, else the refusal to send."""
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            log.warning("webhook refused: no %s header", SIGNATURE_HEADER)
            return _message(401, f"missing {SIGNATURE_HEADER} header")
        # The rest of a refused body is never read: each refusal closes the connection rather
        # than drain it.
        close = {"Connection": "close"}
        mac = new_mac(self.secret)
        # The deadline, the budget of bodies being read and a client going away are the
        # app's, for every route alike (dispatcher/web/bodies.py).
        try:
            chunks = await read_body(request, MAX_BODY_BYTES, mac)
        except BodyTooLarge:
            log.warning("webhook refused: body over %d bytes", MAX_BODY_BYTES)
            return _message(413, "body larger than 1 MiB", headers=close)
        if not signature_matches(mac, header):
            log.warning("webhook refused: %s does not match the body", SIGNATURE_HEADER)
            return _message(401, f"{SIGNATURE_HEADER} does not match the body")
        return b"".join(chunks)  # only now: a stranger's body is never copied whole

    def _inline_answer(self, event: Event, integration_id: str, order: Order) -> dict[str, str]:
        if self.inline_url:
            return {"assessment_url": _inline_url(self.inline_url, integration_id, order)}
        log.warning(
            "webhook %s: inline order but DISPATCHER_INLINE_ASSESSMENT_URL is not set: "
            "Kombo gets no assessment_url",
            event.id,
            extra={"order_id": order.id, "integration_id": integration_id},
        )
        return {}

    async def _admit(self, integration_id: str, order: Order, event_id: str) -> _Outcome:
        """Reject or dispatch one order, together with every other order arriving meanwhile.

        The ledger's Redis client blocks, so the work runs in a worker thread; at most
        ``_MAX_DRAINS`` batches at a time, each holding every order that arrived while the
        batches before it ran. A batch costs
        :meth:`Ledger.dispatch`'s two round trips per integration, however many orders it
        holds, where one thread per order would cost two each and leave dozens of threads
        fighting over the GIL under a burst of deliveries.
        """
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(integration_id, order, event_id, future, tracing.current()))
        if self._drains < _MAX_DRAINS:
            self._drains += 1
            _background(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:_MAX_BATCH]
                del self._pending[:_MAX_BATCH]
                outcomes: Sequence[_Outcome | Exception]
                try:
                    outcomes = await run_in_threadpool(
                        self._admit_batch,
                        [(item.integration_id, item.order, item.event_id) for item in batch],
                        {(i.integration_id, i.order.id): i.trace for i in batch if i.trace},
                    )
                except Exception as exc:  # a bug: every request of the batch answers 500
                    outcomes = [exc] * len(batch)
                except BaseException:
                    for item in batch:  # cancelled: the server is stopping
                        item.future.cancel()
                    raise
                for item, outcome in zip(batch, outcomes, strict=True):
                    if item.future.done():  # the request was cancelled meanwhile
                        continue
                    if isinstance(outcome, Exception):
                        item.future.set_exception(outcome)
                    else:
                        item.future.set_result(outcome)
        finally:
            self._drains -= 1
            if not self._drains:
                for item in self._pending:  # only left when cancelled
                    item.future.cancel()
                self._pending.clear()

    def _admit_batch(
        self, items: Sequence[_Item], traces: Mapping[tuple[str, str], Any] | None = None
    ) -> list[_Outcome | RedisError]:
        """Reject or dispatch a batch of orders (blocking: runs in a worker thread).

        A Redis failure fails only the orders it concerns (one integration's dispatch, one
        rejection); the same order twice in one batch gets one decision, and the later
        deliveries are answered as replays of the first.
        """
        decided: dict[int, _Outcome | RedisError] = {}
        first: dict[tuple[str, str], int] = {}
        to_dispatch: dict[str, list[int]] = {}
        for index, (integration_id, order, _) in enumerate(items):
            if first.setdefault((integration_id, order.id), index) != index:
                continue
            reason = self._refusal(integration_id, order)
            if reason is None:
                to_dispatch.setdefault(integration_id, []).append(index)
                continue
            try:
                decided[index] = (
                    _Outcome("rejected", reason)
                    if self.ledger.reject(integration_id, order.id, reason)
                    else self._seen_before(integration_id, order.id)
                )
            except RedisError as exc:
                decided[index] = exc
        if self.confirmer is not None:
            to_dispatch = self._confirm(self.confirmer, items, to_dispatch, decided)
        for integration_id, indexes in to_dispatch.items():
            orders = [items[index][1] for index in indexes]
            try:
                parents = {o.id: traces.get((integration_id, o.id)) for o in orders if traces}
                enqueued = set(
                    self.ledger.dispatch(
                        integration_id, orders, source="webhook", trace_parents=parents or None
                    ).enqueued
                )
                for index, order in zip(indexes, orders, strict=True):
                    decided[index] = (
                        _Outcome("enqueued")
                        if order.id in enqueued
                        else self._seen_before(integration_id, order.id)
                    )
            except RedisError as exc:
                decided.update(dict.fromkeys(indexes, exc))
        outcomes: list[_Outcome | RedisError] = []
        for index, (integration_id, order, _) in enumerate(items):
            first_index = first[(integration_id, order.id)]
            outcome = decided[first_index]
            if (
                first_index != index
                and isinstance(outcome, _Outcome)
                and outcome.kind == "enqueued"
            ):
                outcome = _Outcome("already_seen")
            outcomes.append(outcome)
        return outcomes

    def _confirm(
        self,
        confirmer: Confirmer,
        items: Sequence[_Item],
        to_dispatch: dict[str, list[int]],
        decided: dict[int, _Outcome | RedisError],
    ) -> dict[str, list[int]]:
        """The orders of ``to_dispatch`` that Kombo confirms OPEN; decides the others.

        Orders seen before are answered from the ledger, without asking Kombo (a replay of
        a dispatched order costs no request); the rest are asked in one request per
        integration (blocking: runs in the batch's worker thread).
        """
        unseen: dict[str, list[int]] = {}
        for integration_id, indexes in to_dispatch.items():
            ids = [items[index][1].id for index in indexes]
            try:
                values = self.ledger.redis.hmget(self.ledger.keys.seen(integration_id), ids)
                for index, value in zip(indexes, values, strict=True):
                    if value is None:
                        unseen.setdefault(integration_id, []).append(index)
                    else:
                        decided[index] = self._seen_before(integration_id, items[index][1].id)
            except RedisError as exc:
                decided.update({i: exc for i in indexes if i not in decided})
        answers = confirmer.statuses(
            {iid: [items[index][1].id for index in indexes] for iid, indexes in unseen.items()}
        )
        confirmed: dict[str, list[int]] = {}
        for integration_id, indexes in unseen.items():
            for index in indexes:
                _, order, event_id = items[index]
                answer = answers[(integration_id, order.id)]
                try:
                    if answer.status == OrderStatus.OPEN.value:
                        confirmed.setdefault(integration_id, []).append(index)
                    elif answer.status is not None:
                        decided[index] = self._not_open(integration_id, order, event_id, answer)
                    else:
                        decided[index] = self._keep(integration_id, order, event_id, answer)
                except RedisError as exc:
                    decided[index] = exc
        return confirmed

    def _not_open(
        self, integration_id: str, order: Order, event_id: str, answer: Answer
    ) -> _Outcome:
        status = str(answer.status)
        record_event(
            self.ledger.redis, self.ledger.keys, integration_id, order.id, self.timeline_ttl,
            event="webhook_not_open", kombo_status=escape_controls(status)[:40],
            event_id=escape_controls(event_id)[:200],
        )  # fmt: skip
        log.warning(
            "webhook %s: Kombo lists the order as %s, not OPEN: not dispatched (a replayed "
            "delivery?)",
            escape_controls(event_id),
            escape_controls(status)[:40],
            extra={"order_id": order.id, "integration_id": integration_id},
        )
        return _Outcome("not_open", escape_controls(status)[:40])

    def _keep(self, integration_id: str, order: Order, event_id: str, answer: Answer) -> _Outcome:
        problem = answer.problem or "Kombo did not confirm the order"
        pending = Pending(integration_id, order, event_id, time.time(), 0, problem)
        if self.unconfirmed.keep(pending):
            record_event(
                self.ledger.redis, self.ledger.keys, integration_id, order.id,
                self.timeline_ttl, event="webhook_unconfirmed", reason=problem,
                event_id=escape_controls(event_id)[:200],
            )  # fmt: skip
            log.warning(
                "webhook %s: order kept, to confirm with Kombo later: %s",
                escape_controls(event_id),
                problem,
                extra={"order_id": order.id, "integration_id": integration_id},
            )
        return _Outcome("unconfirmed", problem)

    async def confirm_later(self) -> None:
        """Confirm the kept orders, for ever: every few seconds, less often while Kombo
        keeps failing. ``dispatcher web`` runs it (its app's lifespan)."""
        delay = RETRY_EVERY
        while True:
            await asyncio.sleep(delay)
            try:
                failing = await run_in_threadpool(self.confirm_kept)
            except RedisError as exc:
                log.warning("webhook: kept orders not confirmed: redis: %s", exc)
                failing = True
            except Exception:  # a bug must not end the retries
                log.exception("webhook: kept orders not confirmed")
                failing = True
            delay = min(delay * 2, RETRY_CAP) if failing else RETRY_EVERY

    def confirm_kept(self) -> bool:
        """One round over the kept orders (blocking); whether Kombo still fails some."""
        kept = self.unconfirmed.due()
        if not kept:
            return False
        outcomes = self._admit_batch([(p.integration_id, p.order, p.event_id) for p in kept])
        failing = False
        now = time.time()
        for pending, outcome in zip(kept, outcomes, strict=True):
            extra = {"order_id": pending.order.id, "integration_id": pending.integration_id}
            if isinstance(outcome, Exception):
                failing = True
            elif outcome.kind != "unconfirmed":
                self.unconfirmed.done(pending.integration_id, pending.order.id)
                log.info("webhook %s: kept order confirmed: %s", pending.event_id,
                         outcome.kind, extra=extra)  # fmt: skip
            elif outcome.reason == NOT_LISTED and now - pending.received_at > GIVE_UP_AFTER:
                self.unconfirmed.done(pending.integration_id, pending.order.id)
                record_event(
                    self.ledger.redis, self.ledger.keys, pending.integration_id,
                    pending.order.id, self.timeline_ttl, event="webhook_dropped",
                    reason=f"{NOT_LISTED} after {GIVE_UP_AFTER / 3600:g} h",
                )  # fmt: skip
                log.error("webhook %s: Kombo never listed the order: dropped",
                          pending.event_id, extra=extra)  # fmt: skip
            else:
                failing = True
                self.unconfirmed.update(
                    replace(pending, attempts=pending.attempts + 1,
                            last_error=outcome.reason or pending.last_error)
                )  # fmt: skip
        return failing

    def _seen_before(self, integration_id: str, order_id: str) -> _Outcome:
        # A replay of a rejected order is rejected again (Kombo may have missed the first
        # answer); any other order seen before was dispatched already.
        earlier = self.ledger.rejection(integration_id, order_id)
        if earlier is not None:
            return _Outcome("rejected", earlier)
        return _Outcome("already_seen")

    def _refusal(self, integration_id: str, order: Order) -> str | None:
        """The message rejecting the order, or None to accept it."""
        if self.accepted_packages and order.package_id not in self.accepted_packages:
            return f"Package {order.package_id} is not offered by this vendor."
        for acceptor in self.acceptors:
            try:
                message = acceptor.check(order)
            except Exception as exc:
                # A broken check must neither reject (final, in Kombo) nor lose the order.
                log.error(
                    "handler %s: accepts failed, order accepted: %s: %s",
                    acceptor.handler,
                    type(exc).__name__,
                    exc,
                    extra={"order_id": order.id, "integration_id": integration_id},
                )
                continue
            if message is None:
                continue
            if not isinstance(message, str) or not message.strip():
                log.error(
                    "handler %s: accepts returned %r, not None or a message: order accepted",
                    acceptor.handler,
                    type(message).__name__,
                    extra={"order_id": order.id, "integration_id": integration_id},
                )
                continue
            return message.strip()
        return None


def _inline_url(template: str, integration_id: str, order: Order) -> str:
    return template.format(
        order_id=quote(order.id, safe=""),
        integration_id=quote(integration_id, safe=""),
        package_id=quote(order.package_id, safe=""),
    )


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # Kombo shows the `message` of a 422 in the ATS; every other error answer has the same shape.
    # Messages may quote ids from the body (attacker-controlled): one line, controls escaped.
    return JSONResponse({"message": escape_controls(message)}, status_code=status, headers=headers)
