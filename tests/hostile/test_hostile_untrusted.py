"""Hostile input, issue 22 item 1 (V1, W1, W12): one rule for untrusted text.

Kombo (or anything at KOMBO_BASE_URL) and a vendor's API answer errors echoing what they were
sent: the API key in the Authorization header, the handler's token, and whatever else they
know. Each of the five secrets (Kombo API key, results API token, SMTP password, a handler's
SecretStr, the webhook secret) is planted in each kind of echo (a Python repr of the headers,
a JSON message, long text past the 300 characters a vendor message is cut to, upper-cased),
through the real parts: a Kombo stand-in and a vendor stand-in on real sockets, `dispatcher
poll --once` and `dispatcher worker` in subprocesses, a real redis-server, `dispatcher web`
serving the console. Then every output (logs, every CLI summary, every console page) and every
Redis value is searched for each secret, upper-cased too, and for its first ten characters.

A vendor's error echoing the candidate's e-mail and phone is shown whole on the order's page
(`show`, the console's Order page) and masked on the lists meant to carry no personal data
(`dispatcher failed`, the console's Failures page).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from dispatcher.redact import protect_secrets
from dispatcher.testing.sim import Simulator
from support import dispatcher_web
from support.hostile import (
    API_KEY,
    API_TOKEN,
    FORGED,
    PROVISION_TOKEN,
    SMTP_PASSWORD,
    WEBHOOK_SECRET,
    echo_secrets,
    echoing_kombo,
    exposed,
    json_server,
    redis_values,
)
from support.ops import dispatcher, env_for, settings_for, sweep, work

CONSOLE_TOKEN = "console_TOKENleaks_5566778899"
KINDS = ("repr", "json", "long", "upper")
# The candidate's contact data a vendor echoes (W12).
EMAIL = "jane.leak+w12@example.org"
PHONE = "+49 151 2345 6789"


def _vendor(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
    """A vendor's API refusing every order with an error echoing the request (kind by order)
    and the candidate's contact data."""
    order = json.loads(body)
    kind = str(order["id"]).rpartition("-")[2].lower()
    message = echo_secrets(kind, dict(request.headers.items()), 300)
    if kind in ("repr", "json"):
        message = f"candidate {EMAIL} phone {PHONE}: {message}"
    return 401, {"message": message}


def _redis_exposed(redis: Redis) -> list[tuple[str, bytes]]:
    found = []
    for value in redis_values(redis):
        text = value.decode(errors="replace")
        found.extend((name, value[:160]) for name in exposed(text))
    return found


def _console_pages(url: str, order_ids: list[str]) -> dict[str, str]:
    pages = {}
    with httpx.Client(base_url=url, timeout=20) as client:
        form = client.get("/")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        login = client.post("/console/login", data={"token": CONSOLE_TOKEN, "csrf": csrf[1]})
        assert login.status_code == 303, login.text
        for path in ("/", "/console/integrations", "/console/failures"):
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            pages[path] = answer.text
        for order_id in order_ids:
            answer = client.get("/console/order", params={"id": order_id})
            assert answer.status_code == 200, answer.text
            pages[f"order {order_id}"] = answer.text
    return pages


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(420)  # a dozen and a half processes, on a loaded 2-core machine
def test_every_secret_echoed_by_kombo_or_a_vendor_leaks_to_no_output_page_or_redis_value(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # Given: four integrations whose sweeps Kombo answers with an echo (one kind each), and
    # four orders (of a simulated Kombo) that the vendor refuses with an echo (one kind each).
    kombo_integrations = [f"greenhouse:Echo-{kind}" for kind in KINDS]
    sim = Simulator(["lever:VendorEcho"], 0, seed=22, api_key=API_KEY)
    vendor_integration = sim.integration_ids[0]
    candidate = {
        "remote_id": "c1",
        "email": EMAIL,
        "first_name": "Jane",
        "last_name": "Leak",
        "phone": PHONE,
    }
    orders = [
        sim.add_order(vendor_integration, id=f"Echo-{kind}", candidate=candidate)["id"]
        for kind in KINDS
    ]
    settings = settings_for(redis_url, sim, namespace)
    env = env_for(
        redis_url,
        settings,
        KOMBO_API_KEY=API_KEY,
        KOMBO_INTEGRATION_IDS=",".join([vendor_integration, *kombo_integrations]),
        KOMBO_WEBHOOK_SECRET=WEBHOOK_SECRET,
        DISPATCHER_API_TOKEN=API_TOKEN,
        DISPATCHER_CONSOLE_TOKEN=CONSOLE_TOKEN,
        DISPATCHER_HANDLERS="provision_http,notify_email",
        DISPATCHER_MAX_RETRIES="0",
        SMTP_URL=f"smtp://mailer:{SMTP_PASSWORD}@127.0.0.1:9",
        NOTIFY_FROM="tests@acme.example",
        PROVISION_URL="http://127.0.0.1:9/provision",
        PROVISION_TOKEN=PROVISION_TOKEN,
        KOMBO_RETRY_BUDGET="0",
    )
    outputs: dict[str, str] = {}

    def run(name: str, args: list[str], env: dict[str, str], codes: tuple[int, ...]) -> None:
        result = dispatcher(args, env, timeout=120)
        assert result.returncode in codes, (name, result.stdout, result.stderr)
        outputs[name] = result.stdout + result.stderr

    with sim.serve() as simulated:
        # The vendor's integration only (so the Kombo stand-in's echo is kept apart).
        only_vendor = {**env, "KOMBO_INTEGRATION_IDS": vendor_integration}
        only_vendor["KOMBO_BASE_URL"] = simulated.url
        run("poll (simulator)", ["poll", "--once"], only_vendor, (0,))
    with json_server(echoing_kombo) as kombo:
        only_echo = {
            **env,
            "KOMBO_BASE_URL": kombo,
            "KOMBO_INTEGRATION_IDS": ",".join(kombo_integrations),
        }
        # When: a sweep meets Kombo's echo (log lines, stderr, --json)...
        run("poll --once", ["--log-level", "DEBUG", "poll", "--once"], only_echo, (1,))
        run("poll --once --json", ["poll", "--once", "--json"], only_echo, (1,))
    # ...and the real worker meets the vendor's.
    with json_server(_vendor) as vendor:
        run(
            "worker",
            ["--log-level", "DEBUG", "worker", "--burst"],
            {**env, "PROVISION_URL": f"{vendor}/provision"},
            (0,),
        )
    # Then an operator looks: every CLI summary, and the console.
    looks = [
        ["status"],
        ["status", "--json"],
        ["integrations", "list"],
        ["integrations", "list", "--json"],
        ["failed"],
        ["failed", "--json"],
        *(["show", order_id] for order_id in orders),
        *(["show", order_id, "--json"] for order_id in orders),
    ]
    with ThreadPoolExecutor(4) as pool:  # read-only commands: side by side
        list(pool.map(lambda args: run(" ".join(args), args, env, (0, 1)), looks))
    with dispatcher_web({**env}, tmp_path / "web.log") as url:
        pages = _console_pages(url, orders)
    outputs.update({f"console {path}": html for path, html in pages.items()})
    outputs["web log"] = (tmp_path / "web.log").read_text()

    # The echoes did arrive where they are shown (else searching them proves nothing).
    assert "PLATFORM.INPUT_INVALID" in outputs["status"], outputs["status"]
    assert all(f"Echo-{kind}" in outputs["status"] for kind in KINDS)
    failed = [json.loads(line) for line in outputs["failed --json"].splitlines()]
    assert {job["order_id"] for job in failed} == set(orders), failed
    assert all("HTTP 401" in job["reason"] for job in failed)
    # No secret (nor its start, nor in capitals) anywhere.
    leaked = {name: exposed(text) for name, text in outputs.items() if exposed(text)}
    assert not leaked, leaked
    assert not _redis_exposed(redis)
    assert "***" in outputs["poll --once"] and "***" in outputs["status --json"]
    # A sweep error is one line: Kombo's newlines cannot forge a second one on stderr.
    for name in ("poll --once", "poll --once --json", "status", "integrations list"):
        lines = outputs[name].splitlines()
        assert not [line for line in lines if line.startswith(FORGED)], outputs[name]
    for name in ("poll --once", "poll --once --json", "status --json"):
        assert "FORGED" in outputs[name]  # shown, escaped, on its own record's line
    errors = [line for line in outputs["poll --once"].splitlines() if "dispatcher: error" in line]
    assert errors and all("Echo-" in line for line in errors), outputs["poll --once"]

    # W12: the order's page shows the vendor's words whole; the lists mask the contact data.
    shown = outputs["show Echo-json"] + outputs["console order Echo-json"]
    assert EMAIL in shown and PHONE in shown
    for name in ("failed", "failed --json", "console /console/failures"):
        assert EMAIL not in outputs[name] and PHONE not in outputs[name], name
        assert "&lt;redacted&gt;" in outputs[name] or "<redacted>" in outputs[name], name


class _Hostile:
    """A handler whose vendor answered with line separators and a bidi override."""

    name = "hostile_output"

    def handle(self, order: Any, context: Any) -> dict[str, Any]:
        return {"note": f"ok{SEPARATORS}{PROVISION_TOKEN}"}


SEPARATORS = "\u2028\u2029\u202edlrow\x85"
_UNSAFE = re.compile("[\u2028\u2029\u202a-\u202e\x85]")


@pytest.mark.redis
def test_show_prints_a_vendors_output_and_the_payload_escaped_and_masked(
    redis: Redis, redis_url: str, namespace: str
) -> None:
    # Given an order whose job name (from the ATS) and step output (from a vendor) hold line
    # separators and a bidi override, and the output the handler's token
    sim = Simulator(["lever:ShowEscape"], 0, seed=23)
    job = {"remote_id": "j1", "name": f"Engineer{SEPARATORS}", "hiring_team": []}
    order = sim.add_order(sim.integration_ids[0], id="ShowEscape1", job=job)
    settings = settings_for(redis_url, sim, namespace)
    sweep(redis, settings, sim)
    protect_secrets([PROVISION_TOKEN])  # the worker's registry (handler_settings does this)
    work(redis, settings, [_Hostile()])
    # When an operator looks at the order
    shown = dispatcher(["show", order["id"], "--payload"], env_for(redis_url, settings))
    assert shown.returncode == 0, shown.stderr
    # Then every line is one line, shown as it is, and the token is masked
    assert "hostile_output" in shown.stdout and "Engineer\\u2028" in shown.stdout
    assert not _UNSAFE.search(shown.stdout), [line for line in shown.stdout.split("\n")]
    assert PROVISION_TOKEN not in shown.stdout
