"""The core's command decisions without IO: admission of a request, the verdict of
confirmation by telemetry, and which command a unit's answer may touch."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gateway.core.admission import (
    Admission,
    UnknownCommandType,
    VehicleMoving,
    VehicleNotFound,
    admit,
    check_request,
)
from gateway.core.confirmation import CommandTimes, Verdict, judge_confirmation
from gateway.core.results import refusal
from schemas import Reason, SignalValue
from schemas.commands import (
    COMMAND_SPECS,
    CONFIRMATION_TOLERANCE_MS,
    MOVING_FRESHNESS_MS,
    CommandParamsError,
    CommandResult,
    CommandType,
    ResultStatus,
    expected_state,
    refused_while_moving,
)

VIN = "WVWZZZ1JZXW000001"
OTHER_VIN = "WVWZZZ1JZXW000002"
NOW = 1_764_230_400_000
COMMAND_ID = "0b0e6f5c-3c1e-4d55-9f49-6a4d1c1e8f11"
MOVING: dict[str, tuple[SignalValue, int]] = {"Vehicle.IsMoving": (True, NOW - 1000)}
PARKED: dict[str, tuple[SignalValue, int]] = {"Vehicle.IsMoving": (False, NOW - 1000)}


def decide(
    type_: str = "lock",
    params: Mapping[str, object] | None = None,
    *,
    latest: dict[str, tuple[SignalValue, int]] | None = PARKED,
    online: bool | None = True,
    ttl_s: float | None = None,
) -> Admission:
    request = check_request(type_, params or {})
    return admit(
        request,
        vin=VIN,
        latest=latest,
        online=online,
        now_ms=NOW,
        ttl_s=ttl_s,
        default_ttl_s=300,
        result_timeout_s=30.0,
    )


# --- admission -----------------------------------------------------------------------------


def test_an_admitted_request_carries_what_the_service_stores() -> None:
    admission = decide("climate_start", {"target_temperature_c": 21}, ttl_s=60)
    assert admission == Admission(
        type=CommandType.CLIMATE_START,
        params={"target_temperature_c": 21.0},
        ttl_ms=60_000,
        result_timeout_ms=30_000,
        expects_confirmation=True,
        send_at_once=True,
    )


def test_default_ttl_and_no_confirmation() -> None:
    admission = decide("climate_stop")
    assert admission.ttl_ms == 300_000
    assert admission.expects_confirmation is False


@pytest.mark.parametrize(
    ("online", "at_once"), [(True, True), (None, True), (False, False)], ids=str
)
def test_sent_at_once_unless_the_status_says_offline(online: bool | None, at_once: bool) -> None:
    assert decide(online=online).send_at_once is at_once


def test_unknown_type_and_bad_params_are_refused_before_the_vehicle_is_looked_at() -> None:
    with pytest.raises(UnknownCommandType):
        check_request("self_destruct", {})
    with pytest.raises(CommandParamsError):
        check_request("charge_limit", {"percent": "lots"})


def test_a_vehicle_that_never_reported_is_not_found() -> None:
    with pytest.raises(VehicleNotFound):
        decide(latest=None)


@pytest.mark.parametrize("kind", list(CommandType))
@pytest.mark.parametrize("moving", [False, True], ids=["parked", "moving"])
def test_moving_refuses_exactly_what_the_unit_refuses(kind: CommandType, moving: bool) -> None:
    """One rule for both sides: the gateway refuses what ``refused_while_moving`` says, the
    rule ``unit_decision`` applies on receipt."""
    params = {
        CommandType.CLIMATE_START: {"target_temperature_c": 21},
        CommandType.CHARGE_LIMIT: {"percent": 80},
        CommandType.SPEED_LIMIT: {"kmh": 100},
        CommandType.SET_REPORTING_INTERVAL: {"seconds": 10},
    }.get(kind, {})
    latest = MOVING if moving else PARKED
    if refused_while_moving(kind, moving=moving):
        assert COMMAND_SPECS[kind].unsafe_while_moving
        with pytest.raises(VehicleMoving):
            decide(kind.value, params, latest=latest)
    else:
        decide(kind.value, params, latest=latest)


def test_stale_motion_does_not_refuse() -> None:
    stale: dict[str, tuple[SignalValue, int]] = {
        "Vehicle.IsMoving": (True, NOW - MOVING_FRESHNESS_MS - 1)
    }
    decide("unlock", latest=stale)


# --- confirmation --------------------------------------------------------------------------


def times(**changes: int | None) -> CommandTimes:
    base: dict[str, int | None] = {
        "created_at": NOW - 5000,
        "sent_at": NOW - 4000,
        "accepted_at": NOW - 3000,
        "finished_at": NOW - 2000,
        "unit_accepted_at": NOW - 3000,
    }
    base.update(changes)
    return CommandTimes(**base)  # type: ignore[arg-type]


def judge(
    latest: dict[str, tuple[SignalValue, int]] | None,
    command_times: CommandTimes | None = None,
    *,
    now: int = NOW,
) -> Verdict | None:
    return judge_confirmation(
        CommandType.LOCK,
        {},
        command_times or times(),
        latest,
        now_ms=now,
        confirm_window_ms=120_000,
    )


LOCKED = next(iter(expected_state(CommandType.LOCK, {}) or {}))


def test_fresh_telemetry_in_the_expected_state_confirms() -> None:
    assert judge({LOCKED: (True, NOW - 100)}) == Verdict("confirmed", NOW - 100)


def test_samples_within_the_tolerance_before_acceptance_count() -> None:
    at = NOW - 3000 - CONFIRMATION_TOLERANCE_MS
    assert judge({LOCKED: (True, at)}) == Verdict("confirmed", at)
    assert judge({LOCKED: (True, at - 1)}) is None


def test_without_the_units_time_the_gateways_times_count() -> None:
    old = times(unit_accepted_at=None, accepted_at=None)
    assert judge({LOCKED: (True, NOW - 4000)}, old) == Verdict("confirmed", NOW - 4000)
    assert judge({LOCKED: (True, NOW - 4001)}, old) is None


@pytest.mark.parametrize("unit_time", [0, NOW // 1000])
def test_a_units_clock_never_set_does_not_let_old_telemetry_confirm(unit_time: int) -> None:
    """An answer stamped 0 (or in seconds) made every stored sample fresh: the locked state
    of last week confirmed a lock the unit answered with its clock unset. Such a time is
    not used; the gateway's time of acceptance is."""
    unset = times(unit_accepted_at=unit_time)
    assert judge({LOCKED: (True, NOW - 86_400_000)}, unset) is None
    assert judge({LOCKED: (True, NOW - 3000)}, unset) == Verdict("confirmed", NOW - 3000)


def test_open_until_the_window_has_passed_then_unconfirmed() -> None:
    assert judge({LOCKED: (False, NOW - 100)}) is None
    assert judge(None, now=NOW - 2000 + 120_000) is None
    assert judge(None, now=NOW - 2000 + 120_001) == Verdict("unconfirmed", None)


# --- which command an answer may touch -----------------------------------------------------


def result() -> CommandResult:
    return CommandResult(COMMAND_ID, VIN, ResultStatus.ACCEPTED, NOW)


def test_an_answer_for_its_own_command_is_let_through() -> None:
    assert refusal(result(), command_vin=VIN, topic_vin=VIN, correlation=None) is None
    ok = refusal(result(), command_vin=VIN, topic_vin=VIN, correlation=COMMAND_ID.encode())
    assert ok is None


@pytest.mark.parametrize(
    ("command_vin", "correlation", "reason"),
    [
        (VIN, b"another-command", Reason.CORRELATION_MISMATCH),
        (None, None, Reason.UNKNOWN_COMMAND),
        (OTHER_VIN, None, Reason.VIN_MISMATCH),
    ],
    ids=["correlation", "unknown", "other-vehicle"],
)
def test_answers_that_touch_nothing(
    command_vin: str | None, correlation: bytes | None, reason: Reason
) -> None:
    rejection = refusal(result(), command_vin=command_vin, topic_vin=VIN, correlation=correlation)
    assert rejection is not None
    assert rejection.reason is reason
    assert rejection.vin == VIN
