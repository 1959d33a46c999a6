"""The command part of the device contract: parameters, topics, payloads, confirmation by
telemetry and the unit's rule book. All pure: every decision gets a fixed ``now_ms``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas.commands as commands_module
from schemas import CATALOG, InvalidTopicError, Reason, Rejection, SignalValue, parse_topic
from schemas.commands import (
    COMMAND_SPECS,
    MAX_COMMAND_PAYLOAD_BYTES,
    MOVING_FRESHNESS_MS,
    CommandMessage,
    CommandParamsError,
    CommandResult,
    CommandType,
    ConfirmationMatch,
    InvalidCommand,
    ResultReason,
    ResultStatus,
    command_result_subscription_filter,
    command_result_topic,
    command_topic,
    decode_command,
    decode_command_result,
    encode_command,
    encode_command_result,
    expected_state,
    is_confirmed_by,
    is_valid_command_id,
    message_expiry_interval,
    parse_command_result_topic,
    unit_decision,
    validate_params,
)
from schemas.payloads import validate_signals

VIN = "WVWZZZ1JZXW000001"
OTHER_VIN = "WVWZZZ1JZXW000002"
CID = "0b0e6f5c-3c1e-4d55-9f49-6a4d1c1e8f11"
# 2025-11-27 08:00 UTC
NOW = 1_764_230_400_000
TTL = 60_000

C = CommandType
LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
WINDOW = "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"
HVAC = "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"
CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
HORN = "Vehicle.Body.Horn.IsActive"
HAZARD = "Vehicle.Body.Lights.Hazard.IsSignaling"
LAT = "Vehicle.CurrentLocation.Latitude"
SPEED = "Vehicle.Speed"

ENTERPRISE = {
    C.IMMOBILIZE,
    C.RELEASE_IMMOBILIZER,
    C.SPEED_LIMIT,
    C.REQUEST_DIAGNOSTICS,
    C.SET_REPORTING_INTERVAL,
}
UNSAFE_WHILE_MOVING = {C.UNLOCK, C.IMMOBILIZE, C.CLOSE_WINDOWS}
WITH_PARAMS = {
    C.CLIMATE_START: "target_temperature_c",
    C.CHARGE_LIMIT: "percent",
    C.SPEED_LIMIT: "kmh",
    C.SET_REPORTING_INTERVAL: "seconds",
}
#: one valid parameter set per type (normalised form)
VALID: dict[CommandType, dict[str, Any]] = {t: {} for t in CommandType} | {
    C.CLIMATE_START: {"target_temperature_c": 21.5},
    C.CHARGE_LIMIT: {"percent": 80},
    C.SPEED_LIMIT: {"kmh": 120},
    C.SET_REPORTING_INTERVAL: {"seconds": 60},
}
TYPE_IDS = [t.value for t in CommandType]


def command(
    kind: CommandType = C.LOCK,
    params: Mapping[str, Any] | None = None,
    *,
    vin: str = VIN,
    expires_at: int = NOW + TTL,
) -> CommandMessage:
    return CommandMessage(
        CID, vin, kind, VALID[kind] if params is None else params, NOW - 1_000, expires_at
    )


def command_json(**fields: Any) -> bytes:
    """A command payload (lock for VIN) with ``fields`` replaced; ``...`` drops a key."""
    body: dict[str, Any] = {
        "command_id": CID,
        "vin": VIN,
        "type": "lock",
        "params": {},
        "issued_at": NOW,
        "expires_at": NOW + TTL,
    }
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


def result_json(**fields: Any) -> bytes:
    """A result payload (accepted, from VIN) with ``fields`` replaced; ``...`` drops a key."""
    body: dict[str, Any] = {"command_id": CID, "vin": VIN, "status": "accepted", "ts": NOW}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not ...})


# --- the catalog of commands ------------------------------------------------------------------


def test_every_type_has_a_spec() -> None:
    assert set(COMMAND_SPECS) == set(CommandType)
    assert len(CommandType) == 15
    for kind, spec in COMMAND_SPECS.items():
        assert spec.type is kind
        assert spec.description


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_spec_flags(kind: CommandType) -> None:
    spec = COMMAND_SPECS[kind]
    assert spec.enterprise_only == (kind in ENTERPRISE)
    assert spec.unsafe_while_moving == (kind in UNSAFE_WHILE_MOVING)
    assert spec.param_names == ((WITH_PARAMS[kind],) if kind in WITH_PARAMS else ())


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_confirmation_signals_are_in_the_catalog(kind: CommandType) -> None:
    confirmation = COMMAND_SPECS[kind].confirmation
    if confirmation is None:
        return
    assert confirmation.signals
    assert all(path in CATALOG for path in confirmation.signals)
    state = expected_state(kind, VALID[kind])
    if state is not None:
        # every expected value is one the catalog lets a unit report
        assert validate_signals(state) == dict(state)


# --- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        *[pytest.param(t, {}, None, id=f"{t.value}-empty") for t in CommandType
          if t not in WITH_PARAMS],
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 21.5}, None, id="climate-21.5"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 16}, {"target_temperature_c": 16.0},
                     id="climate-min-int"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 30.0}, None, id="climate-max"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 50}, None, id="limit-min"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 100}, None, id="limit-max"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 30}, None, id="speed-min"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 250}, None, id="speed-max"),
        pytest.param(C.SPEED_LIMIT, {"kmh": None}, None, id="speed-clear"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": 1}, None, id="interval-min"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": 3600}, None, id="interval-max"),
    ],
)  # fmt: skip
def test_valid_params(
    kind: CommandType, raw: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    validated = validate_params(kind, raw)
    assert validated == (raw if expected is None else expected)
    assert {k: type(v) for k, v in validated.items()} == {
        k: type(v) for k, v in (raw if expected is None else expected).items()
    }


@pytest.mark.parametrize(
    ("kind", "raw", "field", "fragment"),
    [
        # missing
        pytest.param(C.CLIMATE_START, {}, "target_temperature_c", "required", id="climate-missing"),
        pytest.param(C.CHARGE_LIMIT, {}, "percent", "required", id="limit-missing"),
        pytest.param(C.SPEED_LIMIT, {}, "kmh", "required", id="speed-missing"),
        pytest.param(C.SET_REPORTING_INTERVAL, {}, "seconds", "required", id="interval-missing"),
        # wrong type
        pytest.param(C.CLIMATE_START, {"target_temperature_c": "21"}, "target_temperature_c",
                     "valid number", id="climate-string"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": True}, "target_temperature_c",
                     "valid number", id="climate-bool"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": None}, "target_temperature_c",
                     "valid number", id="climate-null"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 80.0}, "percent", "valid integer",
                     id="limit-float"),
        pytest.param(C.CHARGE_LIMIT, {"percent": "80"}, "percent", "valid integer",
                     id="limit-string"),
        pytest.param(C.CHARGE_LIMIT, {"percent": True}, "percent", "valid integer",
                     id="limit-bool"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 120.5}, "kmh", "valid integer", id="speed-float"),
        pytest.param(C.SPEED_LIMIT, {"kmh": "off"}, "kmh", "valid integer", id="speed-string"),
        pytest.param(C.SPEED_LIMIT, {"kmh": False}, "kmh", "valid integer", id="speed-bool"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": 1.5}, "seconds", "valid integer",
                     id="interval-float"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": [60]}, "seconds", "valid integer",
                     id="interval-list"),
        # out of range
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 15.9}, "target_temperature_c",
                     "greater than or equal to 16", id="climate-too-cold"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 30.1}, "target_temperature_c",
                     "less than or equal to 30", id="climate-too-hot"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": float("nan")},
                     "target_temperature_c", "finite", id="climate-nan"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": float("inf")},
                     "target_temperature_c", "finite", id="climate-inf"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 49}, "percent", "greater than or equal to 50",
                     id="limit-49"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 101}, "percent", "less than or equal to 100",
                     id="limit-101"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 29}, "kmh", "greater than or equal to 30",
                     id="speed-29"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 251}, "kmh", "less than or equal to 250",
                     id="speed-251"),
        pytest.param(C.SPEED_LIMIT, {"kmh": 0}, "kmh", "null to clear", id="speed-0"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": 0}, "seconds",
                     "greater than or equal to 1", id="interval-0"),
        pytest.param(C.SET_REPORTING_INTERVAL, {"seconds": 3601}, "seconds",
                     "less than or equal to 3600", id="interval-3601"),
        # extra, next to a valid one
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 21, "fan": 3}, "fan",
                     "takes: target_temperature_c", id="climate-extra"),
        pytest.param(C.LOCK, {"force": True}, "force", "takes: no parameters", id="lock-extra"),
    ],
)  # fmt: skip
def test_invalid_params_name_the_field(
    kind: CommandType, raw: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(CommandParamsError) as info:
        validate_params(kind, raw)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.type is kind
    assert error.field == field
    assert fragment in error.message
    assert str(error) == f"invalid parameters for {kind.value}: {field}: {error.message}"


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_every_type_refuses_an_unknown_parameter(kind: CommandType) -> None:
    with pytest.raises(CommandParamsError) as info:
        validate_params(kind, {**VALID[kind], "bogus": 1})
    assert info.value.field == "bogus"
    assert "unknown parameter" in info.value.message


@pytest.mark.parametrize("kind", list(WITH_PARAMS), ids=[t.value for t in WITH_PARAMS])
def test_every_parameter_is_required(kind: CommandType) -> None:
    with pytest.raises(CommandParamsError) as info:
        validate_params(kind, {})
    assert info.value.field == WITH_PARAMS[kind]


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_valid_example_of_every_type(kind: CommandType) -> None:
    assert validate_params(kind, VALID[kind]) == VALID[kind]


def test_params_that_are_not_an_object() -> None:
    with pytest.raises(CommandParamsError) as info:
        validate_params(C.CHARGE_LIMIT, [80])  # type: ignore[arg-type]
    assert info.value.field == "params"
    assert "JSON object" in info.value.message


# --- topics ----------------------------------------------------------------------------------


def test_topics() -> None:
    assert command_topic(VIN) == f"v1/vehicles/{VIN}/commands"
    assert command_result_topic(VIN) == f"v1/vehicles/{VIN}/commands/result"
    assert command_result_subscription_filter() == "v1/vehicles/+/commands/result"
    assert parse_command_result_topic(command_result_topic(VIN)) == VIN


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        pytest.param(f"v1/vehicles/{VIN}/commands", "expected v1/", id="command-topic"),
        pytest.param(f"v1/vehicles/{VIN}/commands/result/x", "expected v1/", id="extra"),
        pytest.param(f"v1/vehicles/{VIN}/commands/results", "expected v1/", id="plural"),
        pytest.param(f"v1/vehicles/{VIN}/telemetry/result", "expected v1/", id="telemetry"),
        pytest.param(f"v1/vehicles/{VIN}/telemetry", "expected v1/", id="ingest-topic"),
        pytest.param(f"v2/vehicles/{VIN}/commands/result", "does not start", id="v2"),
        pytest.param("v1/vehicles/+/commands/result", "not a valid VIN", id="wildcard"),
        pytest.param("v1/vehicles/wvwzzz1jzxw000001/commands/result", "not a valid VIN",
                     id="lower-vin"),
        pytest.param("", "does not start", id="empty"),
    ],
)  # fmt: skip
def test_parse_command_result_topic_rejects(topic: str, why: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        parse_command_result_topic(topic)
    assert why in info.value.why


@pytest.mark.parametrize("topic", [command_topic(VIN), command_result_topic(VIN)])
def test_command_topics_are_not_ingest_topics(topic: str) -> None:
    with pytest.raises(InvalidTopicError):
        parse_topic(topic)


# --- command payloads ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_command_round_trip(kind: CommandType) -> None:
    message = command(kind)
    payload = encode_command(message)
    assert decode_command(payload) == message
    assert orjson.loads(payload)["type"] == kind.value


def test_speed_limit_clear_round_trip() -> None:
    message = command(C.SPEED_LIMIT, {"kmh": None})
    assert b'"kmh":null' in encode_command(message)
    assert decode_command(encode_command(message)) == message


@given(
    temperature=st.floats(min_value=16, max_value=30, allow_nan=False),
    percent=st.integers(min_value=50, max_value=100),
    ttl=st.integers(min_value=1, max_value=7 * 24 * 3600 * 1000),
)
def test_command_round_trip_property(temperature: float, percent: int, ttl: int) -> None:
    for message in (
        command(C.CLIMATE_START, {"target_temperature_c": temperature}, expires_at=NOW + ttl),
        command(C.CHARGE_LIMIT, {"percent": percent}, expires_at=NOW + ttl),
    ):
        assert decode_command(encode_command(message)) == message


def test_decode_command_normalises_an_integer_temperature() -> None:
    decoded = decode_command(
        command_json(type="climate_start", params={"target_temperature_c": 21})
    )
    assert isinstance(decoded, CommandMessage)
    assert decoded.params == {"target_temperature_c": 21.0}
    assert isinstance(decoded.params["target_temperature_c"], float)


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        pytest.param(b"", Reason.MALFORMED_JSON, "", id="empty"),
        pytest.param(b"{", Reason.MALFORMED_JSON, "", id="broken"),
        pytest.param(b"[]", Reason.INVALID_ENVELOPE, "", id="array"),
        pytest.param(b"null", Reason.INVALID_ENVELOPE, "", id="null"),
        pytest.param(command_json(command_id=...), Reason.INVALID_ENVELOPE, "command_id",
                     id="no-id"),
        pytest.param(command_json(command_id=CID.upper()), Reason.INVALID_ENVELOPE, "command_id",
                     id="uppercase-id"),
        pytest.param(command_json(command_id="42"), Reason.INVALID_ENVELOPE, "command_id",
                     id="not-a-uuid"),
        pytest.param(command_json(command_id=7), Reason.INVALID_ENVELOPE, "command_id",
                     id="numeric-id"),
        pytest.param(command_json(vin="WVWZZZ1JZXO000001"), Reason.INVALID_VIN, "vin",
                     id="bad-vin"),
        pytest.param(command_json(vin=...), Reason.INVALID_ENVELOPE, "vin", id="no-vin"),
        pytest.param(command_json(type=...), Reason.INVALID_ENVELOPE, "type", id="no-type"),
        pytest.param(command_json(type=""), Reason.INVALID_ENVELOPE, "type", id="empty-type"),
        pytest.param(command_json(type=3), Reason.INVALID_ENVELOPE, "type", id="numeric-type"),
        pytest.param(command_json(params=...), Reason.INVALID_ENVELOPE, "params",
                     id="no-params"),
        pytest.param(command_json(params=None), Reason.INVALID_ENVELOPE, "params",
                     id="null-params"),
        pytest.param(command_json(params=[]), Reason.INVALID_ENVELOPE, "params",
                     id="array-params"),
        pytest.param(command_json(issued_at=...), Reason.INVALID_ENVELOPE, "issued_at",
                     id="no-issued-at"),
        pytest.param(command_json(issued_at=-1), Reason.INVALID_ENVELOPE, "issued_at",
                     id="negative-issued-at"),
        pytest.param(command_json(expires_at=float(NOW + TTL)), Reason.INVALID_ENVELOPE,
                     "expires_at", id="float-expiry"),
        pytest.param(command_json(expires_at=str(NOW + TTL)), Reason.INVALID_ENVELOPE,
                     "expires_at", id="string-expiry"),
        pytest.param(command_json(expires_at=NOW), Reason.INVALID_ENVELOPE,
                     "is not after issued_at", id="zero-ttl"),
        pytest.param(command_json(expires_at=NOW - 1), Reason.INVALID_ENVELOPE,
                     "is not after issued_at", id="negative-ttl"),
        pytest.param(command_json(priority="high"), Reason.INVALID_ENVELOPE, "priority",
                     id="extra-field"),
        pytest.param(command_json(params={"pad": "x" * MAX_COMMAND_PAYLOAD_BYTES}),
                     Reason.PAYLOAD_TOO_LARGE, "limit is", id="too-large"),
    ],
)  # fmt: skip
def test_decode_command_rejects(payload: bytes, reason: Reason, fragment: str) -> None:
    decoded = decode_command(payload)
    assert isinstance(decoded, Rejection), decoded
    assert decoded.reason is reason
    assert fragment in decoded.detail


@pytest.mark.parametrize(
    ("fields", "reason", "fragment"),
    [
        pytest.param({"type": "self_destruct"}, ResultReason.UNSUPPORTED, "self_destruct",
                     id="unknown-type"),
        pytest.param({"type": "Lock"}, ResultReason.UNSUPPORTED, "'Lock'", id="type-case"),
        pytest.param({"params": {"force": True}}, ResultReason.BAD_PARAMS, "force",
                     id="lock-extra"),
        pytest.param({"type": "charge_limit", "params": {"percent": 20}},
                     ResultReason.BAD_PARAMS, "percent", id="limit-out-of-range"),
        pytest.param({"type": "speed_limit", "params": {}}, ResultReason.BAD_PARAMS, "kmh",
                     id="speed-missing"),
    ],
)  # fmt: skip
def test_decode_command_answerable_but_invalid(
    fields: dict[str, Any], reason: ResultReason, fragment: str
) -> None:
    decoded = decode_command(command_json(**fields))
    assert isinstance(decoded, InvalidCommand), decoded
    assert (decoded.command_id, decoded.vin, decoded.reason) == (CID, VIN, reason)
    assert (decoded.issued_at, decoded.expires_at) == (NOW, NOW + TTL)
    assert fragment in decoded.detail
    # the unit answers it instead of leaving the requester to time out
    answer = unit_decision(decoded, vin=VIN, now_ms=NOW, is_moving=False)
    assert answer == CommandResult(CID, VIN, ResultStatus.REJECTED, NOW, reason, decoded.detail)


def test_command_ids() -> None:
    assert is_valid_command_id(str(uuid.uuid4()))
    assert is_valid_command_id(CID)
    assert not is_valid_command_id(CID.upper())
    assert not is_valid_command_id("{" + CID + "}")
    assert not is_valid_command_id(CID.replace("-", ""))
    assert not is_valid_command_id(CID + "\n")


@pytest.mark.parametrize(
    ("left_ms", "seconds"),
    [(TTL, 60), (1_999, 1), (1_000, 1), (999, None), (0, None), (-5_000, None)],
)
def test_message_expiry_interval_rounds_down(left_ms: int, seconds: int | None) -> None:
    message = command(expires_at=NOW + left_ms)
    assert message_expiry_interval(message, now_ms=NOW) == seconds


# --- result payloads --------------------------------------------------------------------------

VALID_RESULTS = [
    CommandResult(CID, VIN, ResultStatus.ACCEPTED, NOW),
    CommandResult(CID, VIN, ResultStatus.SUCCEEDED, NOW, detail="doors locked"),
    CommandResult(CID, VIN, ResultStatus.FAILED, NOW),
    CommandResult(CID, VIN, ResultStatus.FAILED, NOW, ResultReason.INTERNAL_ERROR, "CAN timeout"),
    *[CommandResult(CID, VIN, ResultStatus.REJECTED, NOW, reason) for reason in ResultReason],
    CommandResult(CID, VIN, ResultStatus.REJECTED, NOW, ResultReason.EXPIRED, "ü" * 512),
]


@pytest.mark.parametrize(
    "result",
    VALID_RESULTS,
    ids=[f"{r.status.value}-{r.reason}-{r.detail is not None}" for r in VALID_RESULTS],
)
def test_result_round_trip(result: CommandResult) -> None:
    payload = encode_command_result(result)
    assert decode_command_result(payload, topic_vin=VIN) == result
    body = orjson.loads(payload)
    assert ("reason" in body) == (result.reason is not None)
    assert ("detail" in body) == (result.detail is not None)


@pytest.mark.parametrize(
    ("payload", "reason", "fragment"),
    [
        pytest.param(b"not json", Reason.MALFORMED_JSON, "", id="not-json"),
        pytest.param(b'"accepted"', Reason.INVALID_ENVELOPE, "", id="string"),
        pytest.param(result_json(command_id=...), Reason.INVALID_ENVELOPE, "command_id",
                     id="no-id"),
        pytest.param(result_json(command_id="abc"), Reason.INVALID_ENVELOPE, "command_id",
                     id="bad-id"),
        pytest.param(result_json(status=...), Reason.INVALID_ENVELOPE, "status",
                     id="no-status"),
        pytest.param(result_json(status="done"), Reason.INVALID_ENVELOPE, "status",
                     id="unknown-status"),
        pytest.param(result_json(status="ACCEPTED"), Reason.INVALID_ENVELOPE, "status",
                     id="status-case"),
        pytest.param(result_json(status="rejected", reason="Too Tired"), Reason.INVALID_ENVELOPE,
                     "reason", id="reason-not-a-code"),
        pytest.param(result_json(status="failed", reason="x" * 65), Reason.INVALID_ENVELOPE,
                     "reason", id="reason-too-long"),
        pytest.param(result_json(status="failed", reason=None), Reason.INVALID_ENVELOPE,
                     "reason", id="null-reason"),
        pytest.param(result_json(detail="x" * 513), Reason.INVALID_ENVELOPE, "detail",
                     id="detail-too-long"),
        pytest.param(result_json(detail=5), Reason.INVALID_ENVELOPE, "detail",
                     id="numeric-detail"),
        pytest.param(result_json(ts=...), Reason.INVALID_ENVELOPE, "ts", id="no-ts"),
        pytest.param(result_json(vin=...), Reason.INVALID_ENVELOPE, "vin", id="no-vin"),
        pytest.param(result_json(ts=1.5), Reason.INVALID_ENVELOPE, "ts", id="float-ts"),
        pytest.param(result_json(ts=-1), Reason.INVALID_ENVELOPE, "ts", id="negative-ts"),
        pytest.param(result_json(seq=1), Reason.INVALID_ENVELOPE, "seq", id="extra-field"),
        pytest.param(result_json(vin="WVWZZZ1JZXW00000"), Reason.INVALID_VIN, "vin",
                     id="bad-vin"),
        pytest.param(result_json(vin=OTHER_VIN), Reason.VIN_MISMATCH, OTHER_VIN,
                     id="other-vehicle"),
        pytest.param(result_json(status="rejected"), Reason.INVALID_ENVELOPE, "needs a reason",
                     id="rejected-without-reason"),
        pytest.param(result_json(status="accepted", reason="expired"), Reason.INVALID_ENVELOPE,
                     "has no reason", id="accepted-with-reason"),
        pytest.param(result_json(status="succeeded", reason="internal_error"),
                     Reason.INVALID_ENVELOPE, "has no reason", id="succeeded-with-reason"),
        pytest.param(result_json(detail="x" * MAX_COMMAND_PAYLOAD_BYTES),
                     Reason.PAYLOAD_TOO_LARGE, "limit is", id="too-large"),
    ],
)  # fmt: skip
def test_decode_result_rejects(payload: bytes, reason: Reason, fragment: str) -> None:
    decoded = decode_command_result(payload, topic_vin=VIN)
    assert isinstance(decoded, Rejection), decoded
    assert decoded.reason is reason
    assert decoded.vin == VIN
    assert fragment in decoded.detail


@pytest.mark.parametrize(
    "reason",
    [
        ResultReason.HARDWARE_FAULT,
        ResultReason.PRECONDITION_FAILED,
        ResultReason.INTERRUPTED,
        ResultReason.BUSY,
        ResultReason.INTERNAL_ERROR,
        ResultReason.OTHER,
    ],
)
def test_failed_with_the_units_own_reason_is_a_result(reason: ResultReason) -> None:
    """Issue 11: a ``failed`` with ``hardware_fault`` was quarantined as invalid_envelope."""
    payload = result_json(status="failed", reason=reason.value, detail="lock motor stalled")
    assert decode_command_result(payload, topic_vin=VIN) == CommandResult(
        CID, VIN, ResultStatus.FAILED, NOW, reason, "lock motor stalled"
    )


@pytest.mark.parametrize("status", ["failed", "rejected"])
def test_an_unknown_reason_code_becomes_other_and_keeps_the_units_words(status: str) -> None:
    decoded = decode_command_result(
        result_json(status=status, reason="flux_capacitor", detail="it overheated"),
        topic_vin=VIN,
    )
    assert isinstance(decoded, CommandResult)
    assert decoded.reason is ResultReason.OTHER
    assert decoded.detail == "flux_capacitor: it overheated"
    without_detail = decode_command_result(
        result_json(status=status, reason="tired"), topic_vin=VIN
    )
    assert isinstance(without_detail, CommandResult)
    assert (without_detail.reason, without_detail.detail) == (ResultReason.OTHER, "tired")
    longest = decode_command_result(
        result_json(status=status, reason="z" * 64, detail="d" * 512), topic_vin=VIN
    )
    assert isinstance(longest, CommandResult)
    assert longest.detail is not None
    assert len(longest.detail) == 512
    assert longest.detail.startswith("z" * 64 + ": ")


@given(
    status=st.sampled_from(ResultStatus),
    reason=st.none() | st.sampled_from(ResultReason),
    detail=st.none() | st.text(max_size=512),
    ts=st.integers(min_value=0, max_value=2**53),
)
def test_result_round_trip_property(
    status: ResultStatus, reason: ResultReason | None, detail: str | None, ts: int
) -> None:
    result = CommandResult(CID, VIN, status, ts, reason, detail)
    decoded = decode_command_result(encode_command_result(result), topic_vin=VIN)
    allowed = (
        reason is not None
        if status is ResultStatus.REJECTED
        else reason is None or status is ResultStatus.FAILED
    )
    if allowed:
        assert decoded == result
    else:
        assert isinstance(decoded, Rejection)
        assert decoded.reason is Reason.INVALID_ENVELOPE


# --- confirmation by telemetry -----------------------------------------------------------------

EXPECTED_STATE: dict[CommandType, dict[str, SignalValue] | None] = {
    C.LOCK: {LOCKED: True},
    C.UNLOCK: {LOCKED: False},
    C.HORN_AND_LIGHTS: {HORN: True, HAZARD: True},
    C.LOCATE: None,
    C.CLIMATE_START: {HVAC: 21.5},
    C.CLIMATE_STOP: None,
    C.CHARGING_START: {CHARGING: True},
    C.CHARGING_STOP: {CHARGING: False},
    C.CHARGE_LIMIT: {LIMIT: 80},
    C.CLOSE_WINDOWS: {WINDOW: 0},
    C.IMMOBILIZE: None,
    C.RELEASE_IMMOBILIZER: None,
    C.SPEED_LIMIT: None,
    C.REQUEST_DIAGNOSTICS: None,
    C.SET_REPORTING_INTERVAL: None,
}
NOT_CONFIRMABLE = {t for t, s in COMMAND_SPECS.items() if s.confirmation is None}


def test_expected_state_table_is_complete() -> None:
    assert set(EXPECTED_STATE) == set(CommandType)
    assert {
        C.CLIMATE_STOP,
        C.IMMOBILIZE,
        C.RELEASE_IMMOBILIZER,
        C.SPEED_LIMIT,
        C.REQUEST_DIAGNOSTICS,
        C.SET_REPORTING_INTERVAL,
    } == NOT_CONFIRMABLE


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
def test_expected_state(kind: CommandType) -> None:
    state = expected_state(kind, VALID[kind])
    expected = EXPECTED_STATE[kind]
    assert (dict(state) if state is not None else None) == expected
    if state is not None:
        assert is_confirmed_by(kind, VALID[kind], {SPEED: 0.0, **state})


def test_expected_state_follows_the_parameter() -> None:
    assert expected_state(C.CLIMATE_START, {"target_temperature_c": 18.0}) == {HVAC: 18.0}
    assert expected_state(C.CHARGE_LIMIT, {"percent": 95}) == {LIMIT: 95}


@pytest.mark.parametrize("kind", sorted(NOT_CONFIRMABLE), ids=str)
def test_unconfirmable_commands_are_never_confirmed(kind: CommandType) -> None:
    everything: dict[str, SignalValue] = {
        LOCKED: True, HORN: True, HAZARD: True, CHARGING: True, LAT: 48.1, WINDOW: 0,
    }  # fmt: skip
    assert not is_confirmed_by(kind, VALID[kind], everything)
    assert not is_confirmed_by(kind, VALID[kind], {})


TEMP = {"target_temperature_c": 21.5}


@pytest.mark.parametrize(
    ("kind", "params", "signals", "confirmed"),
    [
        pytest.param(C.LOCK, {}, {LOCKED: True}, True, id="lock-locked"),
        pytest.param(C.LOCK, {}, {LOCKED: False}, False, id="lock-unlocked"),
        pytest.param(C.LOCK, {}, {SPEED: 0.0}, False, id="lock-absent"),
        pytest.param(C.LOCK, {}, {LOCKED: 1}, False, id="lock-int-is-not-bool"),
        pytest.param(C.UNLOCK, {}, {LOCKED: False}, True, id="unlock-unlocked"),
        pytest.param(C.UNLOCK, {}, {LOCKED: True}, False, id="unlock-locked"),
        pytest.param(C.UNLOCK, {}, {LOCKED: 0}, False, id="unlock-int-is-not-bool"),
        pytest.param(C.HORN_AND_LIGHTS, {}, {HORN: True}, True, id="horn-only"),
        pytest.param(C.HORN_AND_LIGHTS, {}, {HAZARD: True}, True, id="hazard-only"),
        pytest.param(C.HORN_AND_LIGHTS, {}, {HORN: False, HAZARD: True}, True,
                     id="hazard-not-horn"),
        pytest.param(C.HORN_AND_LIGHTS, {}, {HORN: False, HAZARD: False}, False,
                     id="neither"),
        pytest.param(C.HORN_AND_LIGHTS, {}, {}, False, id="horn-empty"),
        pytest.param(C.LOCATE, {}, {LAT: 48.137}, True, id="locate-lat"),
        pytest.param(C.LOCATE, {}, {LAT: 0.0}, True, id="locate-equator"),
        pytest.param(C.LOCATE, {}, {SPEED: 0.0}, False, id="locate-no-lat"),
        pytest.param(C.CLIMATE_START, TEMP, {HVAC: 21.5}, True, id="climate-exact"),
        pytest.param(C.CLIMATE_START, TEMP, {HVAC: 21.50000762939453}, True,
                     id="climate-float32"),
        pytest.param(C.CLIMATE_START, {"target_temperature_c": 22.0}, {HVAC: 22}, True,
                     id="climate-int-report"),
        pytest.param(C.CLIMATE_START, TEMP, {HVAC: 22.0}, False, id="climate-other"),
        pytest.param(C.CLIMATE_START, TEMP, {HVAC: 21.4}, False, id="climate-off-by-0.1"),
        pytest.param(C.CLIMATE_START, TEMP, {"Vehicle.Cabin.HVAC.AmbientAirTemperature": 21.5},
                     False, id="climate-ambient-is-not-target"),
        pytest.param(C.CHARGING_START, {}, {CHARGING: True}, True, id="charging"),
        pytest.param(C.CHARGING_START, {}, {CHARGING: False}, False, id="not-charging"),
        pytest.param(C.CHARGING_STOP, {}, {CHARGING: False}, True, id="stopped"),
        pytest.param(C.CHARGING_STOP, {}, {CHARGING: True}, False, id="still-charging"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 80}, {LIMIT: 80}, True, id="limit-set"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 80}, {LIMIT: 79}, False, id="limit-other"),
        pytest.param(C.CHARGE_LIMIT, {"percent": 80}, {LIMIT: "80"}, False, id="limit-text"),
        pytest.param(C.CLOSE_WINDOWS, {}, {WINDOW: 0}, True, id="closed"),
        pytest.param(C.CLOSE_WINDOWS, {}, {WINDOW: 3}, False, id="ajar"),
        pytest.param(C.CLOSE_WINDOWS, {}, {WINDOW: False}, False, id="closed-bool"),
    ],
)  # fmt: skip
def test_is_confirmed_by(
    kind: CommandType,
    params: dict[str, Any],
    signals: dict[str, SignalValue],
    confirmed: bool,
) -> None:
    assert is_confirmed_by(kind, params, signals) is confirmed


def test_confirmation_match_kinds() -> None:
    matches = {t: s.confirmation.match for t, s in COMMAND_SPECS.items() if s.confirmation}
    assert matches[C.HORN_AND_LIGHTS] is ConfirmationMatch.ANY
    assert matches[C.LOCATE] is ConfirmationMatch.PRESENT
    others = set(matches) - {C.HORN_AND_LIGHTS, C.LOCATE}
    assert {matches[t] for t in others} == {ConfirmationMatch.ALL}


# --- the unit's rule book -------------------------------------------------------------------


def rejected(reason: ResultReason, result: CommandResult | None) -> None:
    assert result is not None
    assert (result.command_id, result.vin, result.status, result.ts, result.reason) == (
        CID,
        VIN,
        ResultStatus.REJECTED,
        NOW,
        reason,
    )
    assert result.detail
    # what the unit answers passes the gateway's decoder on the unit's own result topic
    assert decode_command_result(encode_command_result(result), topic_vin=VIN) == result


@pytest.mark.parametrize("kind", list(CommandType), ids=TYPE_IDS)
@pytest.mark.parametrize("is_moving", [False, True], ids=["parked", "moving"])
def test_unit_decision_by_type_and_motion(kind: CommandType, is_moving: bool) -> None:
    decision = unit_decision(command(kind), vin=VIN, now_ms=NOW, is_moving=is_moving)
    if is_moving and kind in UNSAFE_WHILE_MOVING:
        rejected(ResultReason.VEHICLE_MOVING, decision)
        assert kind.value in (decision.detail or "")  # type: ignore[union-attr]
    else:
        assert decision is None


def test_unit_decision_wrong_vin() -> None:
    decision = unit_decision(command(vin=OTHER_VIN), vin=VIN, now_ms=NOW, is_moving=False)
    rejected(ResultReason.WRONG_VIN, decision)  # answered with the unit's own VIN


@pytest.mark.parametrize(
    ("now", "expired"),
    [
        pytest.param(NOW + TTL - 1, False, id="one-ms-before"),
        pytest.param(NOW + TTL, True, id="at-expiry"),
        pytest.param(NOW + TTL + 1, True, id="one-ms-after"),
        pytest.param(NOW + 10 * 3600 * 1000, True, id="hours-late"),
    ],
)
def test_unit_decision_expiry(now: int, expired: bool) -> None:
    message = command(C.UNLOCK)  # expires at NOW + TTL
    decision = unit_decision(message, vin=VIN, now_ms=now, is_moving=False)
    if expired:
        assert decision is not None
        assert (decision.status, decision.reason, decision.ts) == (
            ResultStatus.REJECTED,
            ResultReason.EXPIRED,
            now,
        )
    else:
        assert decision is None


@pytest.mark.parametrize(
    ("message", "is_moving", "reason"),
    [
        pytest.param(command(C.UNLOCK, vin=OTHER_VIN, expires_at=NOW), True,
                     ResultReason.WRONG_VIN, id="wrong-vin-first"),
        pytest.param(command(C.UNLOCK, expires_at=NOW), True, ResultReason.EXPIRED,
                     id="expired-before-moving"),
        pytest.param(InvalidCommand(CID, VIN, "x", ResultReason.UNSUPPORTED, "?", NOW, NOW),
                     False, ResultReason.EXPIRED, id="expired-before-unsupported"),
        pytest.param(InvalidCommand(CID, VIN, "x", ResultReason.BAD_PARAMS, "?", NOW, NOW + 1),
                     True, ResultReason.BAD_PARAMS, id="bad-params-before-moving"),
        pytest.param(InvalidCommand(CID, OTHER_VIN, "x", ResultReason.UNSUPPORTED, "?", NOW,
                                    NOW + 1),
                     False, ResultReason.WRONG_VIN, id="invalid-for-other-vin"),
    ],
)  # fmt: skip
def test_unit_decision_precedence(
    message: CommandMessage | InvalidCommand, is_moving: bool, reason: ResultReason
) -> None:
    rejected(reason, unit_decision(message, vin=VIN, now_ms=NOW, is_moving=is_moving))


# --- what "moving" means to the gateway (fresh motion only) ---------------------------------

MOVING = "Vehicle.IsMoving"


@pytest.mark.parametrize(
    ("latest", "moving"),
    [
        pytest.param({MOVING: (True, NOW - 1_000)}, True, id="is-moving-fresh"),
        pytest.param({MOVING: (True, NOW - MOVING_FRESHNESS_MS)}, True, id="at-the-limit"),
        # issue 11: a 7-minute-old IsMoving=true blocked commands of a parked car
        pytest.param({MOVING: (True, NOW - 7 * 60_000)}, False, id="is-moving-7-min-old"),
        pytest.param({MOVING: (True, NOW - MOVING_FRESHNESS_MS - 1)}, False, id="just-stale"),
        pytest.param({MOVING: (False, NOW), SPEED: (50.0, NOW)}, False, id="is-moving-decides"),
        pytest.param({SPEED: (48.0, NOW - 500)}, True, id="speed-fresh"),
        pytest.param({SPEED: (-3.0, NOW)}, True, id="reversing"),
        pytest.param({SPEED: (0.4, NOW)}, False, id="speed-below-threshold"),
        pytest.param({SPEED: (48.0, NOW - 3_600_000)}, False, id="speed-stale"),
        pytest.param({}, False, id="nothing-known"),
    ],
)
def test_gateway_counts_only_fresh_motion(
    latest: dict[str, tuple[SignalValue, int]], moving: bool
) -> None:
    assert commands_module.is_moving(latest, now_ms=NOW) is moving
