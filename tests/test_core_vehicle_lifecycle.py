"""The vehicle lifecycle's state machine (gateway.core.vehicle_lifecycle), as a table: every
(state, event) pair, allowed or refused, with what it does to the holding period or why it
is refused. The table is written out by hand, so a changed rule fails here."""

from __future__ import annotations

import itertools

import pytest

from gateway.core.vehicle_lifecycle import (
    LifecycleEvent,
    Refusal,
    Transition,
    VehicleState,
    current_state,
    decide,
)

S = VehicleState
E = LifecycleEvent

# (state, event) -> after state (allowed) or refusal reason; "tenure" column: what happens
# to the holding period: "+" starts one, "-" ends one, "-+" ends one and starts the next
ALLOWED = "allowed"
TABLE: dict[tuple[VehicleState, LifecycleEvent], tuple[str, str | VehicleState, str]] = {
    # unregistered: the maker never registered it, nobody holds it
    (S.UNREGISTERED, E.REGISTER): (ALLOWED, S.BUILT, ""),
    (S.UNREGISTERED, E.ISSUE_CODE): ("refused", "vehicle_not_registered", ""),
    (S.UNREGISTERED, E.CLAIM): ("refused", "vehicle_not_registered", ""),
    (S.UNREGISTERED, E.PROVISION): (ALLOWED, S.ACTIVE, "+"),
    (S.UNREGISTERED, E.TRANSFER): ("refused", "vehicle_not_registered", ""),
    (S.UNREGISTERED, E.SERVICE_START): ("refused", "vehicle_not_registered", ""),
    (S.UNREGISTERED, E.SERVICE_END): ("refused", "vehicle_not_registered", ""),
    (S.UNREGISTERED, E.RELEASE): ("refused", "vehicle_not_held", ""),
    (S.UNREGISTERED, E.DECOMMISSION): (ALLOWED, S.DECOMMISSIONED, ""),
    # built: registered, held by nobody
    (S.BUILT, E.REGISTER): ("refused", "vehicle_already_registered", ""),
    (S.BUILT, E.ISSUE_CODE): (ALLOWED, S.BUILT, ""),
    (S.BUILT, E.CLAIM): (ALLOWED, S.ACTIVE, "+"),
    (S.BUILT, E.PROVISION): ("refused", "pairing_code_required", ""),  # operators: allowed
    (S.BUILT, E.TRANSFER): ("refused", "vehicle_not_held", ""),
    (S.BUILT, E.SERVICE_START): ("refused", "vehicle_not_held", ""),
    (S.BUILT, E.SERVICE_END): ("refused", "vehicle_not_held", ""),
    (S.BUILT, E.RELEASE): ("refused", "vehicle_not_held", ""),
    (S.BUILT, E.DECOMMISSION): (ALLOWED, S.DECOMMISSIONED, ""),
    # active: held
    (S.ACTIVE, E.REGISTER): ("refused", "vehicle_held", ""),
    (S.ACTIVE, E.ISSUE_CODE): ("refused", "vehicle_held", ""),
    (S.ACTIVE, E.CLAIM): ("refused", "vehicle_held", ""),
    (S.ACTIVE, E.PROVISION): ("refused", "vehicle_held", ""),
    (S.ACTIVE, E.TRANSFER): (ALLOWED, S.ACTIVE, "-+"),
    (S.ACTIVE, E.SERVICE_START): (ALLOWED, S.IN_SERVICE, ""),
    (S.ACTIVE, E.SERVICE_END): ("refused", "vehicle_not_in_service", ""),
    (S.ACTIVE, E.RELEASE): (ALLOWED, S.BUILT, "-"),  # registered; else unregistered
    (S.ACTIVE, E.DECOMMISSION): (ALLOWED, S.DECOMMISSIONED, "-"),
    # in service: held, a workshop has access
    (S.IN_SERVICE, E.REGISTER): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.ISSUE_CODE): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.CLAIM): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.PROVISION): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.TRANSFER): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.SERVICE_START): ("refused", "vehicle_in_service", ""),
    (S.IN_SERVICE, E.SERVICE_END): (ALLOWED, S.ACTIVE, ""),
    (S.IN_SERVICE, E.RELEASE): (ALLOWED, S.BUILT, "-"),
    (S.IN_SERVICE, E.DECOMMISSION): (ALLOWED, S.DECOMMISSIONED, "-"),
    # decommissioned: terminal
    **{(S.DECOMMISSIONED, e): ("refused", "vehicle_decommissioned", "") for e in E},
}


def test_the_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == set(itertools.product(S, E))


@pytest.mark.parametrize(("state", "event"), sorted(TABLE), ids=lambda v: str(v))
def test_each_pair(state: VehicleState, event: LifecycleEvent) -> None:
    kind, expected, tenure = TABLE[(state, event)]
    result = decide(state, event, registered=True)
    if kind == "refused":
        assert isinstance(result, Refusal), result
        assert (result.reason, result.state, result.event) == (expected, state, event)
        assert result.message  # said to a person
        return
    assert isinstance(result, Transition), result
    assert (result.before, result.after, result.event) == (state, expected, event)
    assert (result.starts_tenure, result.ends_tenure) == ("+" in tenure, "-" in tenure)
    assert (result.end_reason is not None) == result.ends_tenure


@pytest.mark.parametrize(
    ("event", "reason"),
    [(E.TRANSFER, "transferred"), (E.RELEASE, "revoked"), (E.DECOMMISSION, "decommissioned")],
)
def test_how_a_period_ends_is_recorded(event: LifecycleEvent, reason: str) -> None:
    result = decide(S.ACTIVE, event, registered=True)
    assert isinstance(result, Transition)
    assert result.end_reason == reason


def test_operators_provision_a_built_car_without_its_code() -> None:
    result = decide(S.BUILT, E.PROVISION, by_operator=True)
    assert isinstance(result, Transition)
    assert (result.after, result.starts_tenure) == (S.ACTIVE, True)


def test_a_released_car_the_maker_never_registered_is_unregistered_again() -> None:
    for held in (S.ACTIVE, S.IN_SERVICE):
        result = decide(held, E.RELEASE, registered=False)
        assert isinstance(result, Transition)
        assert result.after is S.UNREGISTERED


def test_a_transfer_to_the_holder_itself_is_refused() -> None:
    result = decide(S.ACTIVE, E.TRANSFER, same_holder=True)
    assert isinstance(result, Refusal)
    assert result.reason == "same_holder"


def test_a_decommissioned_car_refuses_even_operators() -> None:
    for event in E:
        result = decide(S.DECOMMISSIONED, event, by_operator=True, registered=True)
        assert isinstance(result, Refusal)


@pytest.mark.parametrize(
    ("flags", "state"),
    [
        ({}, S.UNREGISTERED),
        ({"registered": True}, S.BUILT),
        ({"held": True}, S.ACTIVE),
        ({"held": True, "registered": True}, S.ACTIVE),
        ({"held": True, "in_service": True}, S.IN_SERVICE),
        ({"in_service": True}, S.UNREGISTERED),  # a service without a holder means nothing
        ({"decommissioned": True, "held": True, "registered": True}, S.DECOMMISSIONED),
    ],
)
def test_the_state_is_derived_from_the_registry(
    flags: dict[str, bool], state: VehicleState
) -> None:
    args = {"registered": False, "held": False, "in_service": False, "decommissioned": False}
    assert current_state(**{**args, **flags}) is state
