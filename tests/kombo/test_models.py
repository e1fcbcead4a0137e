from __future__ import annotations

import pytest

from dispatcher.kombo.models import HiringTeamRole, OrderStatus, OrderValidationError, parse_order
from support import order_payload


def test_a_schema_shaped_order_parses_with_nulls_and_unicode() -> None:
    order = parse_order(order_payload("O1"))
    assert order.status is OrderStatus.OPEN
    assert order.candidate.full_name == "Zoë Doe"
    assert order.job.location is None
    assert order.job.hiring_team[0].hiring_team_roles == [HiringTeamRole.RECRUITER]


def test_unknown_fields_are_kept_and_passed_on() -> None:
    raw = order_payload("O1", custom_fields={"level": "senior"})
    raw["candidate"]["pronouns"] = "she/her"
    order = parse_order(raw)
    payload = order.to_payload()
    assert payload["custom_fields"] == {"level": "senior"}
    assert payload["candidate"]["pronouns"] == "she/her"


def test_an_unknown_role_or_status_does_not_sink_the_order() -> None:
    raw = order_payload("O1", status="ON_HOLD")
    raw["job"]["hiring_team"][0]["hiring_team_roles"] = ["INTERVIEWER", "HIRING_MANAGER"]
    order = parse_order(raw)
    assert order.status == "ON_HOLD"
    assert order.job.hiring_team[0].hiring_team_roles == ["INTERVIEWER", "HIRING_MANAGER"]
    assert order.job.hiring_team[0].hiring_team_roles[1] is HiringTeamRole.HIRING_MANAGER


def test_deprecated_endpoint_orders_have_no_status() -> None:
    raw = order_payload("O1")
    del raw["status"]
    order = parse_order(raw)
    assert order.status is None
    assert "status" not in order.to_payload()


def test_to_payload_round_trips_what_kombo_sent() -> None:
    raw = order_payload("O1", custom={"a": [1, None]})
    assert parse_order(raw).to_payload() == raw


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda o: o["candidate"].update(email=None), "candidate.email"),
        (lambda o: o.pop("package_id"), "package_id"),
        (lambda o: o["job"].update(hiring_team="nobody"), "job.hiring_team"),
        (lambda o: o["job"]["hiring_team"][0].update(hiring_team_roles=[7]), "job.hiring_team.0"),
    ],
)
def test_an_invalid_order_names_the_order_and_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    raw = order_payload("BAD1")
    mutate(raw)
    with pytest.raises(OrderValidationError) as info:
        parse_order(raw)
    assert info.value.order_id == "BAD1"
    assert info.value.field.startswith(field)
    assert str(info.value).startswith(f"order BAD1: field {field}")


def test_an_order_without_an_id_is_named_by_its_position() -> None:
    raw = order_payload("X")
    del raw["id"]
    with pytest.raises(OrderValidationError, match=r"order #3: field id"):
        parse_order(raw, position=3)
