"""Remote commands in the device contract (version 1): from a person, through the gateway, to a
vehicle, and the unit's answers back.

Topics (both QoS 1, not retained):

======================================  ===========  ==========================================
topic                                   who          payload
======================================  ===========  ==========================================
``v1/vehicles/{vin}/commands``          the gateway  one :class:`CommandMessage`
``v1/vehicles/{vin}/commands/result``   the unit     one :class:`CommandResult` per step
======================================  ===========  ==========================================

With MQTT 5 the gateway also sets the response topic (the result topic), the correlation data
(the command id) and the message expiry interval (:func:`message_expiry_interval`, the whole
seconds left to live, rounded down so that the broker never delivers a command late).

A command::

    {"command_id": "0b0e6f5c-3c1e-4d55-9f49-6a4d1c1e8f11", "vin": "WVWZZZ1JZXW000001",
     "type": "climate_start", "params": {"target_temperature_c": 21.5},
     "issued_at": 1764230400000, "expires_at": 1764230460000}

The unit answers ``accepted`` or ``rejected`` (with a reason), then, for an accepted command,
``succeeded`` or ``failed``; it may also answer ``succeeded``/``failed`` straight away::

    {"command_id": "0b0e6f5c-...", "vin": "WVWZZZ1JZXW000001", "status": "rejected",
     "reason": "vehicle_moving", "detail": "speed 48 km/h", "ts": 1764230400350}

A result only says what the unit did. Whether the vehicle really is in the expected state is
decided separately, from later telemetry (:func:`expected_state`, :func:`is_confirmed_by`),
because the car's own sensors are the trustworthy witness, not the unit's word.

Safety: a command never runs after its expiry and some never run while the vehicle moves.
:func:`unit_decision` is the single rule book for both; the gateway applies it before sending
and the unit on receipt, so the two can never disagree.

Authenticity (optional; :mod:`schemas.signing`): a gateway with a signing key adds a
per-vehicle ``counter`` and an Ed25519 ``signature`` to every command; a unit provisioned
with the gateway's public key refuses an unsigned or badly signed command
(``bad_signature``) and one whose counter is not above the last it took (``replayed``).
Without a key both fields are absent and nothing is checked.

Everything here is pure (no clock, no I/O): times come in as arguments.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any, NotRequired, TypeAlias

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic import with_config as _with_config
from typing_extensions import TypedDict

from schemas.duplicates import duplicate_key, member_count
from schemas.payloads import Reason, Rejection, SignalValue, duplicate_rejection
from schemas.signing import Ed25519PublicKey, verify_command
from schemas.topics import CONTRACT_VERSION, InvalidTopicError
from schemas.vin import VIN_PATTERN, is_valid_vin

__all__ = [
    "COMMAND_ID_PATTERN",
    "COMMAND_SPECS",
    "CONFIRMATION_TOLERANCE_MS",
    "FLOAT_TOLERANCE",
    "MAX_COMMAND_PAYLOAD_BYTES",
    "MOVING_FRESHNESS_MS",
    "REASON_CODE_PATTERN",
    "ChargeLimitParams",
    "ClimateStartParams",
    "CommandMessage",
    "CommandParamsError",
    "CommandResult",
    "CommandSpec",
    "CommandType",
    "Confirmation",
    "ConfirmationMatch",
    "FromParam",
    "InvalidCommand",
    "NoParams",
    "ParamValue",
    "ReportingIntervalParams",
    "ResultReason",
    "ResultStatus",
    "SpeedLimitParams",
    "command_result_subscription_filter",
    "command_result_topic",
    "command_topic",
    "decode_command",
    "decode_command_result",
    "encode_command",
    "encode_command_result",
    "expected_state",
    "is_confirmed_by",
    "is_moving",
    "is_valid_command_id",
    "message_expiry_interval",
    "parse_command_result_topic",
    "refused_while_moving",
    "unit_decision",
    "validate_params",
]

#: A parameter value: a JSON scalar (``None`` is meaningful, e.g. "clear the speed limit").
ParamValue: TypeAlias = bool | int | float | str | None

#: The canonical, lower-case UUID text (``str(uuid.uuid4())``). Only one spelling is accepted
#: so that the id in a result always matches the stored id byte for byte.
COMMAND_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

#: Commands and results are small; anything bigger is refused before parsing.
MAX_COMMAND_PAYLOAD_BYTES = 8 * 1024

_DETAIL_MAX = 512
_COMMAND_ID_RE = re.compile(COMMAND_ID_PATTERN)


class CommandType(enum.StrEnum):
    """Every command of contract v1. The last five are for enterprise fleets only."""

    LOCK = "lock"
    UNLOCK = "unlock"
    HORN_AND_LIGHTS = "horn_and_lights"
    LOCATE = "locate"
    CLIMATE_START = "climate_start"
    CLIMATE_STOP = "climate_stop"
    CHARGING_START = "charging_start"
    CHARGING_STOP = "charging_stop"
    CHARGE_LIMIT = "charge_limit"
    CLOSE_WINDOWS = "close_windows"
    # --- enterprise ---
    IMMOBILIZE = "immobilize"
    RELEASE_IMMOBILIZER = "release_immobilizer"
    SPEED_LIMIT = "speed_limit"
    REQUEST_DIAGNOSTICS = "request_diagnostics"
    SET_REPORTING_INTERVAL = "set_reporting_interval"


class ResultStatus(enum.StrEnum):
    """What a unit answers: first ``accepted``/``rejected``, then ``succeeded``/``failed``."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ResultReason(enum.StrEnum):
    """Why a unit rejected or failed a command (machine-readable; ``detail`` is for people).

    The first eight are the unit's rule book (:func:`unit_decision`) and come with
    ``rejected``; the rest are for ``failed`` (the unit accepted the command and could not
    carry it out), though a unit may use any of them with either status. A code a unit sends
    that is not listed here is recorded as :attr:`OTHER`, with the unit's own code kept at
    the start of the detail (:func:`decode_command_result`), so a newer firmware's reason is
    never lost and never makes the answer unreadable.
    """

    WRONG_VIN = "wrong_vin"
    EXPIRED = "expired"
    VEHICLE_MOVING = "vehicle_moving"
    UNSUPPORTED = "unsupported"
    BAD_PARAMS = "bad_params"
    INTERNAL_ERROR = "internal_error"
    #: the unit holds the gateway's public key and the signature is missing or does not verify
    BAD_SIGNATURE = "bad_signature"
    #: the command's counter is not above the last one the unit took: a replay
    REPLAYED = "replayed"
    #: the vehicle is not in a state to do it (charging: not plugged in, or at the limit)
    PRECONDITION_FAILED = "precondition_failed"
    #: an actuator or sensor fault (the lock motor did not move)
    HARDWARE_FAULT = "hardware_fault"
    #: stopped half way (the driver intervened, the ignition came on)
    INTERRUPTED = "interrupted"
    #: another command is still running and this one cannot run beside it
    BUSY = "busy"
    #: a reason outside this list (the unit's own code starts the detail)
    OTHER = "other"


#: what a unit may write as ``reason``: a short snake_case code (known or not)
REASON_CODE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


# --- parameters ---------------------------------------------------------------------------------

# Strict: ``"21"`` is not a temperature and ``true`` is not a percentage. Frozen: validated
# parameters are values, never edited after the fact.
_PARAMS_CONFIG = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class NoParams(BaseModel):
    """The parameters of a command that takes none: ``{}``."""

    model_config = _PARAMS_CONFIG


class ClimateStartParams(BaseModel):
    model_config = _PARAMS_CONFIG

    target_temperature_c: float = Field(
        ge=16, le=30, description="cabin target temperature, 16 to 30 degrees Celsius"
    )


class ChargeLimitParams(BaseModel):
    model_config = _PARAMS_CONFIG

    percent: int = Field(
        ge=50, le=100, description="charge limit, an integer percentage from 50 to 100"
    )


class SpeedLimitParams(BaseModel):
    """``kmh`` must be given: ``null`` clears the limit explicitly, so a forgotten field can
    never lift a fleet's speed limit by accident."""

    model_config = _PARAMS_CONFIG

    kmh: Annotated[int, Field(ge=30, le=250)] | None = Field(
        description="speed limit, an integer from 30 to 250 km/h, or null to clear it"
    )


class ReportingIntervalParams(BaseModel):
    model_config = _PARAMS_CONFIG

    seconds: int = Field(
        ge=1, le=3600, description="telemetry reporting interval, 1 to 3600 seconds"
    )


class CommandParamsError(ValueError):
    """Raised by :func:`validate_params`; ``field`` names the offending parameter (or
    ``"params"`` when the parameters as a whole are not an object)."""

    def __init__(self, type: CommandType, field: str, message: str) -> None:
        self.type = type
        self.field = field
        self.message = message
        super().__init__(f"invalid parameters for {type.value}: {field}: {message}")


# --- confirmation by telemetry ----------------------------------------------------------------


class ConfirmationMatch(enum.StrEnum):
    """How later telemetry confirms a command."""

    #: every listed signal has its expected value
    ALL = "all"
    #: at least one listed signal has its expected value (horn *or* hazard lights)
    ANY = "any"
    #: a listed signal is present at all, whatever its value (a fresh position for locate)
    PRESENT = "present"


@dataclass(frozen=True, slots=True)
class FromParam:
    """An expected value taken from the command's parameter ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class Confirmation:
    """Which catalog signals confirm a command, and with which values.

    ``expected`` pairs a VSS path with a fixed value or a :class:`FromParam`; for
    :attr:`ConfirmationMatch.PRESENT` the value is ignored (``None``). Data, not code, so the
    API can show it and a test can check every path against the catalog.
    """

    match: ConfirmationMatch
    expected: tuple[tuple[str, SignalValue | FromParam | None], ...]

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.expected)


_ParamsModel: TypeAlias = type[BaseModel]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Everything the contract says about one command type."""

    type: CommandType
    description: str
    params_model: _ParamsModel
    enterprise_only: bool = False
    #: refused while the vehicle moves, by the gateway before sending and by the unit
    unsafe_while_moving: bool = False
    #: ``None``: telemetry cannot confirm this command (the unit's result is all there is)
    confirmation: Confirmation | None = None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.params_model.model_fields)


_LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
_WINDOW = "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"
_HVAC_TARGET = "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"
_IS_CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
_CHARGE_LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
_HORN = "Vehicle.Body.Horn.IsActive"
_HAZARD = "Vehicle.Body.Lights.Hazard.IsSignaling"
_LATITUDE = "Vehicle.CurrentLocation.Latitude"


def _equals(*expected: tuple[str, SignalValue | FromParam]) -> Confirmation:
    return Confirmation(ConfirmationMatch.ALL, tuple(expected))


T = CommandType
_SPECS: tuple[CommandSpec, ...] = (
    CommandSpec(T.LOCK, "Lock the doors.", NoParams, confirmation=_equals((_LOCKED, True))),
    CommandSpec(
        T.UNLOCK,
        "Unlock the doors.",
        NoParams,
        unsafe_while_moving=True,
        confirmation=_equals((_LOCKED, False)),
    ),
    CommandSpec(
        T.HORN_AND_LIGHTS,
        "Sound the horn and flash the hazard lights, to find the car in a car park.",
        NoParams,
        confirmation=Confirmation(ConfirmationMatch.ANY, ((_HORN, True), (_HAZARD, True))),
    ),
    CommandSpec(
        T.LOCATE,
        "Send a fresh position sample now.",
        NoParams,
        confirmation=Confirmation(ConfirmationMatch.PRESENT, ((_LATITUDE, None),)),
    ),
    CommandSpec(
        T.CLIMATE_START,
        "Start the climate control with a target cabin temperature.",
        ClimateStartParams,
        confirmation=_equals((_HVAC_TARGET, FromParam("target_temperature_c"))),
    ),
    CommandSpec(T.CLIMATE_STOP, "Stop the climate control.", NoParams),
    CommandSpec(
        T.CHARGING_START,
        "Start charging (the car must be plugged in).",
        NoParams,
        confirmation=_equals((_IS_CHARGING, True)),
    ),
    CommandSpec(
        T.CHARGING_STOP,
        "Stop charging.",
        NoParams,
        confirmation=_equals((_IS_CHARGING, False)),
    ),
    CommandSpec(
        T.CHARGE_LIMIT,
        "Set the state of charge at which charging stops.",
        ChargeLimitParams,
        confirmation=_equals((_CHARGE_LIMIT, FromParam("percent"))),
    ),
    CommandSpec(
        T.CLOSE_WINDOWS,
        "Close the windows (a closing window can trap a hand: never while moving).",
        NoParams,
        unsafe_while_moving=True,
        confirmation=_equals((_WINDOW, 0)),
    ),
    CommandSpec(
        T.IMMOBILIZE,
        "Prevent the engine from starting (stolen-vehicle recovery).",
        NoParams,
        enterprise_only=True,
        unsafe_while_moving=True,
    ),
    CommandSpec(
        T.RELEASE_IMMOBILIZER,
        "Allow the engine to start again.",
        NoParams,
        enterprise_only=True,
    ),
    CommandSpec(
        T.SPEED_LIMIT,
        "Set or clear a maximum speed.",
        SpeedLimitParams,
        enterprise_only=True,
    ),
    CommandSpec(
        T.REQUEST_DIAGNOSTICS,
        "Report the active diagnostic trouble codes now.",
        NoParams,
        enterprise_only=True,
    ),
    CommandSpec(
        T.SET_REPORTING_INTERVAL,
        "Change how often the unit sends telemetry.",
        ReportingIntervalParams,
        enterprise_only=True,
    ),
)
del T

#: command type -> spec, read-only; every :class:`CommandType` has one
COMMAND_SPECS: Mapping[CommandType, CommandSpec] = MappingProxyType({s.type: s for s in _SPECS})


def validate_params(type: CommandType, raw: Mapping[str, Any]) -> dict[str, ParamValue]:
    """Check ``raw`` against the parameters of ``type`` and return them normalised
    (``21`` becomes ``21.0`` for a temperature). Raises :class:`CommandParamsError` naming the
    first offending field."""
    spec = COMMAND_SPECS[type]
    try:
        model = spec.params_model.model_validate(dict(raw) if isinstance(raw, Mapping) else raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        loc = error["loc"]
        field = str(loc[0]) if loc else "params"
        raise CommandParamsError(type, field, _param_message(spec, field, error)) from None
    params: dict[str, ParamValue] = model.model_dump()
    return params


def _param_message(spec: CommandSpec, field: str, error: Any) -> str:
    if error["type"] == "extra_forbidden":
        takes = ", ".join(spec.param_names) or "no parameters"
        return f"unknown parameter (a {spec.type.value} command takes: {takes})"
    if field == "params":
        return f"parameters must be a JSON object, got {error.get('input')!r:.40}"
    info = spec.params_model.model_fields.get(field)
    expected = f"; expected {info.description}" if info and info.description else ""
    if error["type"] == "missing":
        return f"required{expected}"
    return f"{error['msg']} (got {error.get('input')!r:.40}){expected}"


def _resolve(value: SignalValue | FromParam | None, params: Mapping[str, Any]) -> Any:
    return params[value.name] if isinstance(value, FromParam) else value


def expected_state(
    type: CommandType, params: Mapping[str, Any]
) -> Mapping[str, SignalValue] | None:
    """The signal values a successful command brings about (``params`` as returned by
    :func:`validate_params`).

    ``None`` when no particular value is expected: the command is not confirmed by telemetry
    at all, or, for ``locate``, any fresh position confirms it (see :func:`is_confirmed_by`).
    For ``horn_and_lights`` both signals are listed; either one confirms.
    """
    confirmation = COMMAND_SPECS[type].confirmation
    if confirmation is None or confirmation.match is ConfirmationMatch.PRESENT:
        return None
    return MappingProxyType(
        {path: _resolve(value, params) for path, value in confirmation.expected}
    )


#: A sample confirms a command when its ``ts`` is at most this much before the unit's own
#: ``ts`` of ``accepted``: both are the unit's clock, and a unit may stamp its answer just
#: after the sample that already shows the new state.
CONFIRMATION_TOLERANCE_MS = 1_000

#: Floats are compared with this tolerance: units keep VSS ``float`` signals in 32 bits, so
#: 21.3 comes back as 21.299999237...
FLOAT_TOLERANCE = 0.01


def _matches(expected: Any, actual: SignalValue) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        # True == 1 in Python; in the contract a boolean is never a number
        return isinstance(expected, bool) and isinstance(actual, bool) and expected is actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if isinstance(expected, float) or isinstance(actual, float):
            return math.isclose(expected, actual, rel_tol=0.0, abs_tol=FLOAT_TOLERANCE)
        return expected == actual
    return bool(expected == actual)


def is_confirmed_by(
    type: CommandType, params: Mapping[str, Any], signals: Mapping[str, SignalValue]
) -> bool:
    """Whether one sample's ``signals`` confirm the command.

    The caller passes only samples taken after the command was accepted ("fresh"); a sample
    that lacks a signal neither confirms nor refutes. Always ``False`` for a command that
    telemetry cannot confirm (``COMMAND_SPECS[type].confirmation is None``).
    """
    confirmation = COMMAND_SPECS[type].confirmation
    if confirmation is None:
        return False
    if confirmation.match is ConfirmationMatch.PRESENT:
        return any(path in signals for path in confirmation.signals)
    hits = (
        path in signals and _matches(_resolve(value, params), signals[path])
        for path, value in confirmation.expected
    )
    return all(hits) if confirmation.match is ConfirmationMatch.ALL else any(hits)


# --- topics ---------------------------------------------------------------------------------

_PREFIX = f"{CONTRACT_VERSION}/vehicles/"
_COMMANDS = "commands"
_RESULT = "result"


def command_topic(vin: str) -> str:
    """Where the gateway publishes commands for ``vin``; the unit subscribes to it."""
    return f"{_PREFIX}{vin}/{_COMMANDS}"


def command_result_topic(vin: str) -> str:
    """Where the unit answers; also the MQTT 5 response topic of every command."""
    return f"{_PREFIX}{vin}/{_COMMANDS}/{_RESULT}"


def command_result_subscription_filter() -> str:
    """The gateway's filter for every vehicle's results (before a shared-subscription prefix)."""
    return f"{_PREFIX}+/{_COMMANDS}/{_RESULT}"


def parse_command_result_topic(topic: str) -> str:
    """Return the VIN of ``v1/vehicles/{vin}/commands/result``; raise
    :class:`~schemas.topics.InvalidTopicError` for anything else."""
    if not topic.startswith(_PREFIX):
        raise InvalidTopicError(topic, f"it does not start with {_PREFIX!r}")
    parts = topic[len(_PREFIX) :].split("/")
    if len(parts) != 3 or parts[1:] != [_COMMANDS, _RESULT]:
        raise InvalidTopicError(topic, "expected v1/vehicles/{vin}/commands/result")
    if not is_valid_vin(parts[0]):
        raise InvalidTopicError(topic, f"{parts[0]!r} is not a valid VIN")
    return parts[0]


# --- payloads -------------------------------------------------------------------------------


def is_valid_command_id(command_id: str) -> bool:
    return _COMMAND_ID_RE.fullmatch(command_id) is not None


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """A command as the gateway publishes it. Times are milliseconds since the Unix epoch."""

    command_id: str
    vin: str
    type: CommandType
    params: Mapping[str, ParamValue]
    issued_at: int
    #: the unit must not start the command at or after this instant
    expires_at: int
    #: per-vehicle counter, strictly increasing from one signed command to the next (a unit
    #: refuses a counter at or below the last it took: see :func:`unit_decision`)
    counter: int | None = None
    #: the gateway's Ed25519 signature (:mod:`schemas.signing`), base64url; ``None``: unsigned
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class InvalidCommand:
    """A well-formed command message that this contract cannot run: an unknown type (newer
    than the unit's firmware) or bad parameters. Unlike a :class:`~schemas.Rejection` it
    carries the command id, so the unit can answer ``rejected`` (see :func:`unit_decision`)
    instead of leaving the requester waiting for a timeout."""

    command_id: str
    vin: str
    type: str
    reason: ResultReason
    detail: str
    issued_at: int
    expires_at: int
    #: the parameters as received (unvalidated): part of what the signature covers
    params: Mapping[str, Any] = field(default_factory=dict)
    counter: int | None = None
    signature: str | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One answer of a unit. ``reason`` is required for ``rejected``, optional for ``failed``
    and absent otherwise; ``ts`` is the unit's clock (the gateway stamps transitions with its
    own receive time, so a unit with a wrong clock still gets its answers through)."""

    command_id: str
    vin: str
    status: ResultStatus
    ts: int
    reason: ResultReason | None = None
    detail: str | None = None


_ENVELOPE_CONFIG = ConfigDict(strict=True, extra="forbid")
_Ts = Annotated[int, Field(ge=0, le=2**53)]
_CommandId = Annotated[str, StringConstraints(pattern=COMMAND_ID_PATTERN)]
_Vin = Annotated[str, StringConstraints(pattern=VIN_PATTERN)]


@_with_config(_ENVELOPE_CONFIG)
class _CommandIn(TypedDict):
    command_id: _CommandId
    vin: _Vin
    # any short string here: an unknown type is answered ``unsupported``, not quarantined
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any]
    issued_at: _Ts
    expires_at: _Ts
    counter: NotRequired[Annotated[int, Field(ge=0, le=2**63 - 1)]]
    # any short text: a malformed signature is answered ``bad_signature``, not ignored
    signature: NotRequired[Annotated[str, StringConstraints(min_length=1, max_length=256)]]


@_with_config(_ENVELOPE_CONFIG)
class _ResultIn(TypedDict):
    command_id: _CommandId
    vin: _Vin
    status: ResultStatus
    # any short code: an unknown one becomes ``other`` (see ResultReason), not a quarantine
    reason: NotRequired[Annotated[str, StringConstraints(pattern=REASON_CODE_PATTERN)]]
    detail: NotRequired[Annotated[str, StringConstraints(max_length=_DETAIL_MAX)]]
    ts: _Ts


_COMMAND_ADAPTER: TypeAdapter[Any] = TypeAdapter(_CommandIn)
_RESULT_ADAPTER: TypeAdapter[Any] = TypeAdapter(_ResultIn)


def _describe(error: Any) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "payload"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r:.80})"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = (
            "not a field of a command answer in device contract v1 (docs/device-contract.md "
            "§10.5: command_id, vin, status, ts, reason, detail)"
        )
    return f"{loc}: {message}{shown}"


def _envelope_rejection(exc: ValidationError, *, vin: str | None) -> Rejection:
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        reason = Reason.MALFORMED_JSON
    elif any(e["loc"][:1] == ("vin",) and e["type"] == "string_pattern_mismatch" for e in errors):
        reason = Reason.INVALID_VIN
    else:
        reason = Reason.INVALID_ENVELOPE
    return Rejection(reason, "; ".join(_describe(e) for e in errors[:5]), vin=vin)


def _too_large(payload: bytes, *, vin: str | None) -> Rejection | None:
    if len(payload) <= MAX_COMMAND_PAYLOAD_BYTES:
        return None
    return Rejection(
        Reason.PAYLOAD_TOO_LARGE,
        f"payload is {len(payload)} bytes; the limit is {MAX_COMMAND_PAYLOAD_BYTES}",
        vin=vin,
    )


def encode_command(command: CommandMessage) -> bytes:
    """The wire form; ``counter`` and ``signature`` only when set."""
    body: dict[str, object] = {
        "command_id": command.command_id,
        "vin": command.vin,
        "type": command.type.value,
        "params": dict(command.params),
        "issued_at": command.issued_at,
        "expires_at": command.expires_at,
    }
    if command.counter is not None:
        body["counter"] = command.counter
    if command.signature is not None:
        body["signature"] = command.signature
    return orjson.dumps(body)


def decode_command(payload: bytes) -> CommandMessage | InvalidCommand | Rejection:
    """Decode a command as a unit receives it. Never raises for bad input.

    - :class:`CommandMessage`: well formed; next, :func:`unit_decision`.
    - :class:`InvalidCommand`: well-formed envelope with an unknown type or bad parameters;
      the unit answers ``rejected`` (``unit_decision`` builds the answer).
    - :class:`~schemas.Rejection`: not a command at all (too large, not JSON, envelope wrong,
      ``expires_at`` not after ``issued_at``); nothing to answer.

    The payload's VIN is not compared with anything here: a unit that gets another vehicle's
    command answers ``wrong_vin`` through :func:`unit_decision`.
    """
    if (too_large := _too_large(payload, vin=None)) is not None:
        return too_large
    try:
        raw = _COMMAND_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        return _envelope_rejection(exc, vin=None)
    if (twice := duplicate_key(payload, member_count(raw))) is not None:
        return duplicate_rejection(twice, vin=raw["vin"])
    if raw["expires_at"] <= raw["issued_at"]:
        return Rejection(
            Reason.INVALID_ENVELOPE,
            f"expires_at {raw['expires_at']} is not after issued_at {raw['issued_at']}",
            vin=raw["vin"],
        )

    def invalid(reason: ResultReason, detail: str) -> InvalidCommand:
        return InvalidCommand(
            raw["command_id"],
            raw["vin"],
            raw["type"],
            reason,
            detail,
            raw["issued_at"],
            raw["expires_at"],
            raw["params"],
            raw.get("counter"),
            raw.get("signature"),
        )

    try:
        command_type = CommandType(raw["type"])
    except ValueError:
        return invalid(ResultReason.UNSUPPORTED, f"unknown command type {raw['type']!r:.80}")
    try:
        params = validate_params(command_type, raw["params"])
    except CommandParamsError as exc:
        return invalid(ResultReason.BAD_PARAMS, str(exc)[:_DETAIL_MAX])
    return CommandMessage(
        raw["command_id"],
        raw["vin"],
        command_type,
        params,
        raw["issued_at"],
        raw["expires_at"],
        raw.get("counter"),
        raw.get("signature"),
    )


def encode_command_result(result: CommandResult) -> bytes:
    body: dict[str, object] = {
        "command_id": result.command_id,
        "vin": result.vin,
        "status": result.status.value,
        "ts": result.ts,
    }
    if result.reason is not None:
        body["reason"] = result.reason.value
    if result.detail is not None:
        body["detail"] = result.detail
    return orjson.dumps(body)


def decode_command_result(payload: bytes, *, topic_vin: str) -> CommandResult | Rejection:
    """Decode a result published on ``v1/vehicles/{topic_vin}/commands/result``.

    Never raises for bad input. Whether the command id is known, and the result fits the
    command's state, is for the gateway to judge; this checks only the message itself.
    """
    if (too_large := _too_large(payload, vin=topic_vin)) is not None:
        return too_large
    try:
        raw = _RESULT_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        return _envelope_rejection(exc, vin=topic_vin)
    if (twice := duplicate_key(payload, member_count(raw))) is not None:
        return duplicate_rejection(twice, vin=topic_vin)
    if raw["vin"] != topic_vin:
        return Rejection(
            Reason.VIN_MISMATCH,
            f"payload vin {raw['vin']!r} differs from the topic's vin {topic_vin!r}",
            vin=topic_vin,
        )
    status: ResultStatus = raw["status"]
    reason, detail = _reason_of(raw.get("reason"), raw.get("detail"))
    if status is ResultStatus.REJECTED and reason is None:
        return Rejection(
            Reason.INVALID_ENVELOPE,
            f"a rejected result needs a reason (command {raw['command_id']})",
            vin=topic_vin,
        )
    if status in (ResultStatus.ACCEPTED, ResultStatus.SUCCEEDED) and reason is not None:
        return Rejection(
            Reason.INVALID_ENVELOPE,
            f"a result with status {status.value} has no reason (command {raw['command_id']})",
            vin=topic_vin,
        )
    return CommandResult(raw["command_id"], raw["vin"], status, raw["ts"], reason, detail)


def _reason_of(code: str | None, detail: str | None) -> tuple[ResultReason | None, str | None]:
    """A unit's reason code as a :class:`ResultReason`; an unknown code becomes ``other``
    and leads the detail (``"flux_capacitor: it overheated"``), cut to the detail limit."""
    if code is None:
        return None, detail
    try:
        return ResultReason(code), detail
    except ValueError:
        kept = code if detail is None else f"{code}: {detail}"
        return ResultReason.OTHER, kept[:_DETAIL_MAX]


#: How old (by ``ts``) the vehicle's latest motion signal may be and still count: a vehicle
#: whose last ``IsMoving: true`` is older than this is not known to be moving now (the unit,
#: which checks its live sensors on receipt, decides; see :func:`unit_decision`).
MOVING_FRESHNESS_MS = 60_000
#: below this speed (km/h, either direction) a vehicle without ``IsMoving`` counts as stopped
MOVING_SPEED_KMH = 0.5
_IS_MOVING = "Vehicle.IsMoving"
_SPEED = "Vehicle.Speed"


def is_moving(latest: Mapping[str, tuple[SignalValue, int]], *, now_ms: int) -> bool:
    """Whether a vehicle's latest reported state says it is moving *now*: what the gateway
    checks before it sends a command that is unsafe while moving.

    ``latest`` maps a signal path to (value, sample ts). ``Vehicle.IsMoving`` decides when
    present, else ``|Vehicle.Speed| > MOVING_SPEED_KMH``; either only if its sample is at
    most :data:`MOVING_FRESHNESS_MS` old (``now_ms - ts``, with the unit's clock synchronised
    as the contract requires). A stale value proves nothing: a car parked for seven minutes
    after a drive whose last sample said ``IsMoving: true`` is not moving, and the unit
    refuses on receipt anyway if it is.
    """
    moving = latest.get(_IS_MOVING)
    if moving is not None:
        value, ts = moving
        return value is True and now_ms - ts <= MOVING_FRESHNESS_MS
    speed = latest.get(_SPEED)
    if speed is None:
        return False
    value, ts = speed
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and abs(value) > MOVING_SPEED_KMH
        and now_ms - ts <= MOVING_FRESHNESS_MS
    )


def refused_while_moving(type: CommandType, *, moving: bool) -> bool:
    """Whether a command of ``type`` is refused because the vehicle moves: the one rule the
    unit applies on receipt (:func:`unit_decision`, with its live sensors) and the gateway
    before it stores a command (with :func:`is_moving` of the latest telemetry)."""
    return moving and COMMAND_SPECS[type].unsafe_while_moving


def message_expiry_interval(command: CommandMessage, *, now_ms: int) -> int | None:
    """The MQTT 5 message expiry interval for publishing ``command`` at ``now_ms``: whole
    seconds left, rounded down so the broker drops it no later than ``expires_at``.

    ``None`` when less than one second is left: do not publish (MQTT has no sub-second
    expiry, and an interval of 0 is read by some brokers as "never expires").
    """
    seconds = (command.expires_at - now_ms) // 1000
    return seconds if seconds >= 1 else None


# --- the unit's rule book -------------------------------------------------------------------


def unit_decision(
    command: CommandMessage | InvalidCommand,
    *,
    vin: str,
    now_ms: int,
    is_moving: bool,
    public_key: Ed25519PublicKey | None = None,
    last_counter: int | None = None,
) -> CommandResult | None:
    """What a unit must answer on receiving ``command``: a ``rejected`` result, or ``None``
    to accept it. The first rule that applies wins:

    1. ``bad_signature``: only when the unit holds the gateway's ``public_key``: the command
       has no signature or no counter, or the signature does not verify
       (:func:`schemas.signing.verify_command`). First, so that nothing else about an
       unauthenticated message is believed (not even its VIN or expiry);
    2. ``wrong_vin``: the command is for another vehicle;
    3. ``expired``: ``now_ms >= expires_at`` (at the instant of expiry it is already too late);
    4. ``replayed``: only with a ``public_key``: ``counter <= last_counter``, the counter of
       the last authentic, current command the unit took (``None``: none yet);
    5. ``unsupported`` / ``bad_params``: an :class:`InvalidCommand`;
    6. ``vehicle_moving``: the command is unsafe while moving and the vehicle moves.

    A command that passes rules 1-4 should move the unit's ``last_counter`` to its counter,
    even if a later rule refuses it: an ``unlock`` refused while moving must not become
    valid by being replayed once the vehicle stops.

    The gateway applies the same rules before sending (with the vehicle's latest state), so a
    command refused by the gateway would have been refused by the unit too. The result carries
    the unit's own ``vin``: it is published on the unit's own result topic.
    """

    def rejected(reason: ResultReason, detail: str) -> CommandResult:
        return CommandResult(command.command_id, vin, ResultStatus.REJECTED, now_ms, reason, detail)

    if public_key is not None:
        if command.signature is None:
            return rejected(ResultReason.BAD_SIGNATURE, "command is not signed")
        if command.counter is None:
            return rejected(ResultReason.BAD_SIGNATURE, "signed command carries no counter")
        if not verify_command(command, command.signature, public_key):
            return rejected(
                ResultReason.BAD_SIGNATURE, "signature does not verify with the gateway's key"
            )
    if command.vin != vin:
        return rejected(ResultReason.WRONG_VIN, f"command is for {command.vin}, this is {vin}")
    if now_ms >= command.expires_at:
        return rejected(
            ResultReason.EXPIRED,
            f"expired at {command.expires_at}, {now_ms - command.expires_at} ms ago",
        )
    if (
        public_key is not None
        and last_counter is not None
        and command.counter is not None
        and command.counter <= last_counter
    ):
        return rejected(
            ResultReason.REPLAYED,
            f"counter {command.counter} is not above the last one taken, {last_counter}",
        )
    if isinstance(command, InvalidCommand):
        return rejected(command.reason, command.detail)
    if refused_while_moving(command.type, moving=is_moving):
        return rejected(
            ResultReason.VEHICLE_MOVING, f"{command.type.value} is refused while moving"
        )
    return None
