"""Write-back: the result and package models, and the client against the simulator."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from dispatcher.kombo.client import KomboClient
from dispatcher.kombo.errors import KomboError
from dispatcher.kombo.packages import (
    InvalidPackagesError,
    Package,
    PackageType,
    diff_packages,
    load_packages,
    parse_packages,
)
from dispatcher.kombo.results import (
    InvalidResultError,
    ResultStatus,
    attachment_from_file,
    build_result,
)
from dispatcher.store.keys import Keys
from dispatcher.store.result_record import record_result, recorded_result
from dispatcher.testing.sim import DEFAULT_API_KEY, Faults, Simulator

URL = "https://vendor.example/results/1"


# -- the result body -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["COMPLETED", "CANCELLED"])
def test_completed_at_defaults_to_now_when_the_status_needs_it(status: str) -> None:
    before = datetime.now(UTC)
    result = build_result(status=status, result_url=URL)
    assert result.completed_at is not None
    assert before <= result.completed_at <= datetime.now(UTC)
    assert result.to_body()["completed_at"].endswith("Z")


def test_an_open_result_has_no_completed_at_unless_given() -> None:
    assert build_result(status="OPEN", result_url=URL).to_body() == {
        "status": "OPEN",
        "result_url": URL,
    }


def test_the_body_is_what_kombo_takes() -> None:
    result = build_result(
        status="COMPLETED",
        result_url=URL,
        completed_at=datetime(2026, 3, 1, 12, 30, 5, 123456),  # naive: taken as UTC
        score=42,
        max_score=50.5,
        attributes=[
            {"type": "TEXT", "label": "Level", "value": "Senior"},
            {
                "type": "SUB_RESULT",
                "id": "algo",
                "label": "Algorithms",
                "score": {"value": 9, "max": 10},
                "status": "COMPLETED",
            },
        ],
        attachments=[
            {"name": "report.pdf", "content_type": "application/pdf", "data": "JVBERi0="},
            {"name": "video", "data_url": "https://cdn.example/v.mp4"},
        ],
        remote_fields={"greenhouse": {"note": "x"}},
    )
    assert result.to_body() == {
        "status": "COMPLETED",
        "result_url": URL,
        "completed_at": "2026-03-01T12:30:05.123Z",
        "score": 42.0,
        "max_score": 50.5,
        "attributes": [
            {"type": "TEXT", "label": "Level", "value": "Senior"},
            {
                "type": "SUB_RESULT",
                "id": "algo",
                "label": "Algorithms",
                "score": {"value": 9.0, "max": 10.0},
                "status": "COMPLETED",
            },
        ],
        "attachments": [
            {"name": "report.pdf", "content_type": "application/pdf", "data": "JVBERi0="},
            {"name": "video", "data_url": "https://cdn.example/v.mp4"},
        ],
        "remote_fields": {"greenhouse": {"note": "x"}},
    }


def test_a_time_with_an_offset_is_sent_in_utc() -> None:
    when = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)
    body = build_result(status="CANCELLED", result_url=URL, completed_at=when.isoformat())
    assert body.to_body()["completed_at"] == "2026-03-01T14:00:00.000Z"
    local = datetime.fromisoformat("2026-03-01T16:00:00+02:00")
    body = build_result(status="CANCELLED", result_url=URL, completed_at=local)
    assert body.to_body()["completed_at"] == "2026-03-01T14:00:00.000Z"


ATTACHMENT = {"name": "a.txt", "content_type": "text/plain", "data": "aGk="}


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"result_url": URL}, "status", "Field required"),
        ({"status": "DONE", "result_url": URL}, "status", "Input should be"),
        ({"status": "COMPLETED"}, "result_url", "Field required"),
        ({"status": "COMPLETED", "result_url": ""}, "result_url", "at least 1 character"),
        ({"status": "COMPLETED", "result_url": "ftp://x"}, "result_url", "http(s) URL"),
        ({"status": "COMPLETED", "result_url": URL, "score": float("nan")}, "score", "finite"),
        # A string is not a number here, not even one that reads as one: no coercion.
        ({"status": "COMPLETED", "result_url": URL, "score": "87"}, "score", "valid number"),
        ({"status": "COMPLETED", "result_url": URL, "grade": "A"}, "grade", "not permitted"),
        (
            {"status": "COMPLETED", "result_url": URL, "attachments": [ATTACHMENT] * 6},
            "attachments",
            "at most 5",
        ),
        (
            {
                "status": "COMPLETED",
                "result_url": URL,
                "attachments": [{**ATTACHMENT, "data": "!!"}],
            },
            "attachments[0].data",
            "not valid base64",
        ),
        (
            {
                "status": "COMPLETED",
                "result_url": URL,
                "attachments": [ATTACHMENT, {"name": "b", "data": "aGk="}],
            },
            "attachments[1]",
            "content_type is required",
        ),
        (
            {
                "status": "COMPLETED",
                "result_url": URL,
                "attachments": [{**ATTACHMENT, "data_url": "https://x/y"}],
            },
            "attachments[0]",
            "exactly one of data",
        ),
        (
            {
                "status": "COMPLETED",
                "result_url": URL,
                "attributes": [{"type": "TEXT", "value": "v"}],
            },
            "attributes[0].label",
            "Field required",
        ),
        (
            {
                "status": "COMPLETED",
                "result_url": URL,
                "attributes": [
                    {
                        "type": "SUB_RESULT",
                        "id": "a",
                        "label": "A",
                        "score": {"value": 1, "max": 2},
                        "status": "OPEN",
                    }
                ],
            },
            "attributes[0].status",
            "Input should be",
        ),
        (
            {"status": "COMPLETED", "result_url": URL, "attributes": [{"type": "CHART"}]},
            "attributes[0]",
            "tag 'CHART'",
        ),
    ],
)
def test_an_invalid_result_names_the_field(
    fields: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(InvalidResultError) as caught:
        build_result(**fields)
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_an_attachment_from_a_file_guesses_its_type_and_encodes_it(tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(b"%PDF-1.7 \x00\xff")
    blob = tmp_path / "scores.unknownext"
    blob.write_bytes(b"\x01\x02")
    first, second = attachment_from_file(pdf), attachment_from_file(blob)
    assert (first.name, first.content_type) == ("report.pdf", "application/pdf")
    assert base64.b64decode(first.data or "") == b"%PDF-1.7 \x00\xff"
    assert second.content_type == "application/octet-stream"
    with pytest.raises(InvalidResultError, match="No such file"):
        attachment_from_file(tmp_path / "missing.pdf")


def test_a_recorded_result_counts_each_order_once(any_redis: Redis) -> None:
    keys = Keys("ns")
    record_result(any_redis, keys, "lever:a", "O1", ResultStatus.COMPLETED, clock=lambda: 100.0)
    record_result(any_redis, keys, "lever:a", "O1", ResultStatus.COMPLETED, clock=lambda: 200.0)
    record_result(any_redis, keys, "lever:a", "O2", "CANCELLED", clock=lambda: 300.0)
    assert recorded_result(any_redis, keys, "lever:a", "O1") == {"status": "COMPLETED", "at": 200}
    assert recorded_result(any_redis, keys, "lever:a", "O2") == {"status": "CANCELLED", "at": 300}
    assert recorded_result(any_redis, keys, "lever:a", "O3") is None
    assert any_redis.hget(keys.stats, "results_written") == b"2"


# -- packages -------------------------------------------------------------------------------------

PACKAGES = [
    {"id": "ts", "type": "SKILLS_TEST", "name": "TypeScript", "description": "Two hours."},
    {"id": "big5", "type": "BEHAVIORAL", "name": "Big Five", "description": ""},
]


def test_packages_load_from_json_or_toml(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"packages": PACKAGES}))
    (tmp_path / "list.json").write_text(json.dumps(PACKAGES))
    (tmp_path / "p.toml").write_text(
        '[[packages]]\nid = "ts"\ntype = "SKILLS_TEST"\nname = "TypeScript"\n'
        'description = "Two hours."\n\n'
        '[[packages]]\nid = "big5"\ntype = "BEHAVIORAL"\nname = "Big Five"\ndescription = ""\n'
    )
    expected = [Package.model_validate(p) for p in PACKAGES]
    for name in ("p.json", "list.json", "p.toml"):
        assert load_packages(tmp_path / name) == expected
    assert expected[0].type is PackageType.SKILLS_TEST


@pytest.mark.parametrize(
    ("packages", "message"),
    [
        (
            [{**PACKAGES[0], "type": "QUIZ"}],
            "packages[0] (id ts): field type: must be one of BEHAVIORAL, VIDEO_INTERVIEW, "
            "SKILLS_TEST, BACKGROUND_CHECK, REFERENCE_CHECK, got 'QUIZ'",
        ),
        ([PACKAGES[0], {"id": "x", "type": "BEHAVIORAL"}], "packages[1] (id x): field name"),
        ([PACKAGES[0], PACKAGES[0]], "packages[1] (id ts): id 'ts' appears twice"),
        ([{**PACKAGES[0], "price": 3}], "packages[0] (id ts): field price: Extra inputs"),
        ([{**PACKAGES[0], "id": ""}], "packages[0]: field id: String should have at least"),
        ([42], "packages[0]: field (package)"),
    ],
)
def test_an_invalid_package_names_the_package_and_field(packages: list[Any], message: str) -> None:
    with pytest.raises(InvalidPackagesError) as caught:
        parse_packages({"packages": packages}, source="f.json")
    assert str(caught.value).startswith(f"f.json: {message}")


def test_unreadable_or_malformed_package_files_say_so(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "bad.toml").write_text("[[packages]\n")
    (tmp_path / "other.json").write_text('{"pkgs": []}')
    with pytest.raises(InvalidPackagesError, match=r"bad.json: not valid JSON"):
        load_packages(tmp_path / "bad.json")
    with pytest.raises(InvalidPackagesError, match=r"bad.toml: not valid TOML"):
        load_packages(tmp_path / "bad.toml")
    with pytest.raises(InvalidPackagesError, match=r"other.json: unknown top-level key 'pkgs'"):
        load_packages(tmp_path / "other.json")
    with pytest.raises(InvalidPackagesError, match=r"nope.json: cannot read: No such file"):
        load_packages(tmp_path / "nope.json")


def test_the_diff_shows_added_changed_and_deleted() -> None:
    current = parse_packages(
        [
            PACKAGES[0],
            {**PACKAGES[1], "name": "Big 5"},
            {"id": "old", "type": "REFERENCE_CHECK", "name": "Refs", "description": ""},
        ]
    )
    new = parse_packages(
        [*PACKAGES, {"id": "bg", "type": "BACKGROUND_CHECK", "name": "BG", "description": ""}]
    )
    diff = diff_packages(current, new)
    assert [p.id for p in diff.added] == ["bg"]
    assert [(old.name, new.name) for old, new in diff.changed] == [("Big 5", "Big Five")]
    assert [p.id for p in diff.deleted] == ["old"]
    assert [p.id for p in diff.unchanged] == ["ts"]
    assert diff.lines() == [
        "  + bg (BACKGROUND_CHECK): BG",
        "  ~ big5: name 'Big 5' -> 'Big Five'",
        "  - old (REFERENCE_CHECK): Refs  [marked deleted]",
    ]
    assert not diff.empty
    assert diff_packages(new, new).empty


# -- the client against the simulator -------------------------------------------------------------


@pytest.fixture
def sim() -> Simulator:
    return Simulator(2, 3, seed=5, faults=Faults(retry_after=0.25))


def client_for(sim: Simulator, sleeps: list[float] | None = None, **kw: Any) -> KomboClient:
    return KomboClient(
        DEFAULT_API_KEY,
        sim.base_url,
        transport=sim.transport(),
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **kw,
    )


def test_a_result_is_written_and_kombo_warnings_returned(sim: Simulator) -> None:
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    body = build_result(status="COMPLETED", result_url=URL, score=3)  # no max_score: a warning
    with client_for(sim) as client:
        warnings = client.put_result(integration, order_id, body)
    assert warnings == ["score ignored: the ATS can only show a score with its max_score"]
    assert sim.results[(integration, order_id)] == body.to_body()
    assert sim.orders(integration)[0]["status"] == "COMPLETED"


def test_a_rate_limited_write_is_retried_after_retry_after(sim: Simulator) -> None:
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    sim.fail_next("rate_limit", 2)
    sleeps: list[float] = []
    with client_for(sim, sleeps) as client:
        client.put_result(integration, order_id, build_result(status="CANCELLED", result_url=URL))
        sim.fail_next("rate_limit")
        client.set_packages(integration, parse_packages(PACKAGES))
    assert sleeps == [0.25, 0.25, 0.25]
    assert sim.results[(integration, order_id)]["status"] == "CANCELLED"
    assert [p["id"] for p in sim.packages[integration]] == ["ts", "big5"]


def test_kombo_error_envelopes_are_raised_with_code_message_and_log_url(sim: Simulator) -> None:
    integration = sim.integration_ids[0]
    order_id = sim.orders(integration)[0]["id"]
    body = build_result(status="COMPLETED", result_url=URL)
    with client_for(sim) as client:
        with pytest.raises(KomboError) as unknown:
            client.put_result(integration, "NO_SUCH_ORDER", body)
        client.put_result(integration, order_id, body)
        with pytest.raises(KomboError) as closed:
            client.put_result(integration, order_id, body)
        with pytest.raises(KomboError) as nowhere:
            client.get_packages("lever:not-connected")
    assert unknown.value.code == "PLATFORM.INPUT_INVALID"
    assert "does not exist" in unknown.value.message
    assert unknown.value.log_url and unknown.value.log_url.startswith("https://")
    assert closed.value.code == "PLATFORM.INPUT_INVALID"
    assert "only while OPEN" in closed.value.message
    assert nowhere.value.code == "PLATFORM.INTEGRATION_NOT_FOUND"
    assert not nowhere.value.retryable


def test_a_wrong_api_key_is_not_retried(sim: Simulator) -> None:
    sleeps: list[float] = []
    client = KomboClient("wrong", sim.base_url, transport=sim.transport(), sleep=sleeps.append)
    with client, pytest.raises(KomboError) as caught:
        client.set_packages(sim.integration_ids[0], parse_packages(PACKAGES))
    assert caught.value.code == "PLATFORM.AUTHENTICATION_INVALID"
    assert sleeps == []
    assert "wrong" not in str(caught.value)


def test_packages_round_trip_per_integration(sim: Simulator) -> None:
    first, second = sim.integration_ids
    packages = parse_packages(PACKAGES)
    with client_for(sim) as client:
        assert client.get_packages(first) == []
        assert client.set_packages(first, packages) == []
        assert client.get_packages(first) == packages
        assert client.get_packages(second) == []


def test_a_package_list_kombo_garbled_is_an_error_naming_the_field() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        # Not text: garbled (a null or unknown type is Kombo's right, see test_cli_result_commands).
        bad = [{**PACKAGES[0], "type": 5, "created_at": "2026-01-01"}]
        return httpx.Response(200, json={"status": "success", "data": {"packages": bad}})

    client = KomboClient("k", "https://kombo.test/v1", transport=httpx.MockTransport(answer))
    with client, pytest.raises(KomboError, match=r"packages\[0\] \(id ts\): field type"):
        client.get_packages("lever:a")
