"""Logs: order ids on every line about an order, no secrets, contact data only at DEBUG."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from redis import Redis

from dispatcher import HandlerContext, Order, Settings
from dispatcher.logs import (
    OrderLogContext,
    configure_logging,
    order_context,
    protect_secrets,
    secret_values,
)
from dispatcher.store.keys import job_id_for
from dispatcher.testing.sim import Simulator
from support.ops import dispatcher, env_for, settings_for, sweep, work

API_KEY = "sk_live_Z3xTopSecretKey9"
REDIS_PASSWORD = "Hunter2-Redis-Pass"


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_secret_values_finds_every_secret_of_the_settings_and_url_passwords() -> None:
    class More(BaseModel):
        smtp_password: SecretStr = SecretStr("smtp-pass-123")
        tokens: dict[str, SecretStr] = {"crm": SecretStr("crm-token-456")}
        plain: str = "not a secret"

    settings = Settings(KOMBO_API_KEY=API_KEY, REDIS_URL=f"redis://u:{REDIS_PASSWORD}@r:6379/0")
    assert {API_KEY, REDIS_PASSWORD} <= set(secret_values(settings))
    assert set(secret_values(More())) == {"smtp-pass-123", "crm-token-456"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_in_messages_arguments_and_tracebacks(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", fmt, stream=stream)  # type: ignore[arg-type]
    protect_secrets(
        secret_values(
            Settings(KOMBO_API_KEY=API_KEY, REDIS_URL=f"redis://:{REDIS_PASSWORD}@r:6379/0")
        )
    )
    log = logging.getLogger("dispatcher.test")
    log.warning("calling Kombo with Bearer %s", API_KEY)
    log.info(f"redis at redis://:{REDIS_PASSWORD}@r:6379/0")
    try:
        raise RuntimeError(f'auth "{API_KEY}" refused')
    except RuntimeError:
        log.exception("failed")
    out = stream.getvalue()
    assert API_KEY not in out and REDIS_PASSWORD not in out
    assert out.count("***") >= 3
    if fmt == "json":
        entries = json_lines(out)
        assert entries[0]["message"] == "calling Kombo with Bearer ***"
        assert 'RuntimeError: auth "***" refused' in entries[2]["exception"]


class TalksAboutTheCandidate:
    """A careless handler: logs the candidate's contact data at INFO and at DEBUG."""

    name = "careless"

    def handle(self, order: Order, context: HandlerContext) -> dict[str, Any]:
        c = order.candidate
        context.logger.info(
            "inviting %s %s <%s>, phone %s", c.first_name, c.last_name, c.email, c.phone
        )
        context.logger.debug("DEBUG inviting %s %s <%s>", c.first_name, c.last_name, c.email)
        # A plain module logger, no extra: the worker's order context tags it anyway.
        logging.getLogger("some.library").warning("mail to %s bounced", c.email)
        return {}


CANDIDATE = {
    "remote_id": "c-1",
    "email": "zoe.doe@example.com",
    "first_name": "Zoë",
    "last_name": "Doe-Smith",
    "phone": "+49 170 1234567",
}


@pytest.mark.redis
def test_worker_lines_carry_the_order_and_mask_contact_data_above_debug(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    integration = "greenhouse:LogsTest"
    sim = Simulator([integration], 0, seed=9)
    order = sim.add_order(integration, id="LogOrder1", candidate=CANDIDATE)
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim)
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    work(redis, settings, [TalksAboutTheCandidate()], logging_level="DEBUG")
    for handler in logging.getLogger("rq.worker").handlers:
        handler.flush()
    entries = json_lines(stream.getvalue())
    job_id = job_id_for(namespace, integration, order["id"])
    about_order = [
        e
        for e in entries
        if order["id"] in e["message"] or job_id in e["message"] or e.get("order_id")
    ]
    assert len(about_order) >= 4
    for entry in about_order:
        assert (entry.get("order_id"), entry.get("integration_id")) == (order["id"], integration), (
            entry
        )
    contact = [
        CANDIDATE["email"],
        CANDIDATE["first_name"],
        CANDIDATE["last_name"],
        CANDIDATE["phone"],
    ]
    above = [e for e in entries if e["level"] != "DEBUG"]
    for entry in above:
        assert not any(value in json.dumps(entry, ensure_ascii=False) for value in contact), entry
    inviting = next(e for e in above if e["message"].startswith("inviting"))
    assert inviting["message"] == "inviting <redacted> <redacted> <<redacted>>, phone <redacted>"
    assert next(e for e in above if e["logger"] == "some.library")["message"] == (
        "mail to <redacted> bounced"
    )
    debug = next(e for e in entries if e["message"].startswith("DEBUG inviting"))
    assert debug["message"] == "DEBUG inviting Zoë Doe-Smith <zoe.doe@example.com>"


def test_any_email_address_is_masked_above_debug_even_outside_an_order() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "text", stream=stream)
    log = logging.getLogger("dispatcher.test")
    log.info("recruiter jane.roe+ats@customer.example.org notified")
    log.debug("recruiter jane.roe+ats@customer.example.org notified")
    with order_context(OrderLogContext("O1", "lever:x", None, ("Jane",))):
        log.error("Jane said no")
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("recruiter <redacted> notified")
    assert lines[1].endswith("recruiter jane.roe+ats@customer.example.org notified")
    assert lines[2].endswith("<redacted> said no [integration_id=lever:x order_id=O1]")


@pytest.mark.redis
def test_poll_and_worker_logs_in_json_name_the_order_and_never_the_key(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    sim = Simulator(["greenhouse:E2eLogs", "lever:E2eLogs"], 4, seed=10, api_key=API_KEY)
    settings = settings_for(redis_url, sim, namespace, KOMBO_API_KEY=API_KEY)
    order_ids = {o["id"] for i in sim.integration_ids for o in sim.orders(i, status="OPEN")}
    with sim.serve() as server:
        env = env_for(
            redis_url,
            settings,
            KOMBO_API_KEY=API_KEY,
            KOMBO_BASE_URL=server.url,
            DISPATCHER_LOG_FORMAT="json",
            DISPATCHER_LOG_LEVEL="DEBUG",
        )
        poll = dispatcher(["poll", "--once"], env)
        worker = dispatcher(["worker", "--burst"], env)
    assert poll.returncode == 0 and worker.returncode == 0, poll.stderr + worker.stderr
    lines = poll.stderr.splitlines() + worker.stderr.splitlines()
    assert API_KEY not in poll.stderr + worker.stderr + poll.stdout
    entries = [json.loads(line) for line in lines]  # one JSON object a line, nothing else
    mentions = re.compile("|".join([*order_ids, r"order-[0-9a-f]{32}"]))
    about_orders = [e for e in entries if mentions.search(e["message"])]
    assert len(about_orders) >= 3 * len(order_ids)  # taken, handled, finished
    for entry in about_orders:
        assert entry.get("order_id") in order_ids, entry
        assert entry.get("integration_id") in sim.integration_ids, entry


@pytest.mark.timeout(20)
def test_a_megabyte_message_without_an_address_is_cut_and_scrubbed_in_linear_time() -> None:
    # A vendor's error page is attacker-controlled: a long run of word characters without
    # "@" made the address mask backtrack quadratically (minutes for 1 MB, the worker stuck).
    stream = io.StringIO()
    configure_logging("INFO", "text", stream=stream)
    logging.getLogger("dispatcher.test").error("vendor said %s", "y" * 2_000_000 + " a@b.example")
    line = stream.getvalue()
    assert "characters cut" in line
    assert len(line) < 70_000
    assert "a@b.example" not in line
