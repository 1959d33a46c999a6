"""Payloads of the device contract, and the pure functions that encode and decode them.

Decoding is the gateway's first line of defence and must be fast: the whole happy path is
one call into pydantic-core (Rust), which parses the JSON and checks the envelope and every
signal against :data:`schemas.catalog.CATALOG` at once. Only when something is wrong do we
fall back to Python to sort the errors into reason codes, so that a sample with one bad
signal keeps its good ones.

Telemetry (``v1/vehicles/{vin}/telemetry``), one sample::

    {"vin": "WVWZZZ1JZXW000001", "seq": 42, "ts": 1764230400000,
     "signals": {"Vehicle.Speed": 48.5, "Vehicle.CurrentLocation.Latitude": 48.137}}

or a batch (a unit uploading its store-and-forward buffer), oldest first::

    {"vin": "WVWZZZ1JZXW000001", "samples": [{"seq": 43, "ts": ..., "signals": {...}}, ...]}

``seq`` counts up per vehicle and never repeats: (vin, seq) identifies a sample, so a
redelivered message is recognised as a duplicate; it is an integer from 0 to 2**53 - 1 (the
largest integer every JSON parser holds exactly). ``ts`` is when the unit took the sample,
in milliseconds since the Unix epoch (UTC); a ``ts`` before 2020 (``0``, or seconds instead
of milliseconds) is refused as ``implausible_timestamp``, one too far ahead as
``future_timestamp``. Integer signals accept an integral JSON float (``80.0`` is 80).

The normative description for firmware teams is ``docs/device-contract.md``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, NotRequired, Required, TypeAlias, cast

import orjson
import pydantic_core
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic import with_config as _with_config
from typing_extensions import TypedDict

from schemas.catalog import CATALOG, Datatype, SignalSpec
from schemas.duplicates import duplicate_key, member_count
from schemas.vin import VIN_PATTERN

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_SEQ",
    "DecodedTelemetry",
    "Event",
    "EventType",
    "Limits",
    "Reason",
    "Rejection",
    "Sample",
    "SignalValue",
    "Status",
    "StatusState",
    "decode_event",
    "decode_status",
    "decode_telemetry",
    "encode_batch",
    "encode_event",
    "encode_sample",
    "encode_status",
]

SignalValue: TypeAlias = bool | int | float | str | list[str]


class Reason(enum.StrEnum):
    """Why a message, a sample or a signal was quarantined."""

    PAYLOAD_TOO_LARGE = "payload_too_large"
    MALFORMED_JSON = "malformed_json"
    #: a member name twice in one JSON object (decision 0065): parsers disagree on which
    #: value counts, so the message is refused instead of "last one wins"
    DUPLICATE_KEY = "duplicate_key"
    INVALID_TOPIC = "invalid_topic"
    INVALID_ENVELOPE = "invalid_envelope"
    INVALID_VIN = "invalid_vin"
    VIN_MISMATCH = "vin_mismatch"
    FUTURE_TIMESTAMP = "future_timestamp"
    #: ``ts`` before :attr:`Limits.min_plausible_ts_ms` (2020-01-01): ``0``, seconds instead
    #: of milliseconds, or a clock that was never set; stored, it would read as 1970
    IMPLAUSIBLE_TIMESTAMP = "implausible_timestamp"
    UNKNOWN_SIGNAL = "unknown_signal"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    VALUE_NOT_ALLOWED = "value_not_allowed"
    #: a command result for a command id the gateway never issued
    UNKNOWN_COMMAND = "unknown_command"
    #: a message on the topic of a vehicle that is not provisioned (or was revoked): the
    #: broker's ACL should have stopped it; the gateway refuses it as well
    UNPROVISIONED_VEHICLE = "unprovisioned_vehicle"
    #: a sample or event whose ``ts`` is at or after the end (revocation) of the holding
    #: period it would be filed in: taken when nobody held the vehicle, or by a revoked unit
    #: in the moment before the broker dropped it
    AFTER_REVOCATION = "after_revocation"
    #: a command result whose MQTT 5 correlation data differs from its body's command id
    CORRELATION_MISMATCH = "correlation_mismatch"


@dataclass(frozen=True, slots=True)
class Limits:
    max_payload_bytes: int = 256 * 1024
    max_batch_samples: int = 1000
    #: a sample more than this far ahead of the gateway's clock is rejected
    max_future_skew_ms: int = 5 * 60 * 1000
    #: a sample taken before this instant (2020-01-01T00:00:00Z) is rejected: ``ts`` 0, a
    #: time in seconds, or an unset clock, which would otherwise be stored as 1970
    min_plausible_ts_ms: int = 1_577_836_800_000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Sample:
    vin: str
    seq: int
    ts: int
    signals: Mapping[str, SignalValue]


@dataclass(frozen=True, slots=True)
class Rejection:
    """One quarantined thing: a whole message (``signal`` is None) or one signal of a sample."""

    reason: Reason
    detail: str
    vin: str | None = None
    seq: int | None = None
    signal: str | None = None
    #: how many refusals it stands for: 1, or for the entry that sums up a message's
    #: refusals of one reason beyond the first :data:`REJECTIONS_LISTED_PER_MESSAGE`, how many
    count: int = 1


#: the refusals of one message listed one by one (each is a quarantine entry with the
#: message's payload, and a feedback notice); the rest are summed up in one entry per reason
#: that says how many (security review 6, decision 0043: a batch of 19,000 bad signals was
#: 19,000 entries of the same 4 KiB, 188 MB for one 250 kB message)
REJECTIONS_LISTED_PER_MESSAGE: Final = 16


def listed(rejections: Sequence[Rejection]) -> tuple[Rejection, ...]:
    """The first :data:`REJECTIONS_LISTED_PER_MESSAGE` of one message's refusals, then one
    per reason for the rest, with their number (``count``) and the first's seq and signal."""
    if len(rejections) <= REJECTIONS_LISTED_PER_MESSAGE:
        return tuple(rejections)
    rest: dict[Reason, list[Rejection]] = {}
    for r in rejections[REJECTIONS_LISTED_PER_MESSAGE:]:
        rest.setdefault(r.reason, []).append(r)
    summaries = []
    for reason, group in rest.items():
        n = sum(r.count for r in group)
        first = group[0]
        where = "".join(
            f", {name} {value}"
            for name, value in (("seq", first.seq), ("signal", first.signal))
            if value is not None
        )
        detail = (
            f"{n} more {reason.value} refusals in this message (the first{where}), not "
            f"listed one by one: a message lists its first {REJECTIONS_LISTED_PER_MESSAGE}"
        )
        summaries.append(Rejection(reason, detail, vin=first.vin, count=n))
    return (*rejections[:REJECTIONS_LISTED_PER_MESSAGE], *summaries)


@dataclass(frozen=True, slots=True)
class DecodedTelemetry:
    samples: tuple[Sample, ...] = ()
    rejections: tuple[Rejection, ...] = field(default=())


# --- pydantic types built from the catalog ---------------------------------------------

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


def _value_type(spec: SignalSpec) -> Any:
    dt = spec.datatype
    if dt is Datatype.BOOLEAN:
        return bool
    if dt is Datatype.STRING:
        if spec.allowed is not None:
            return Literal[spec.allowed]
        return Annotated[str, StringConstraints(max_length=256)]
    if dt is Datatype.STRING_ARRAY:
        return Annotated[
            list[Annotated[str, StringConstraints(max_length=64)]], Field(max_length=256)
        ]
    if dt.is_integer:
        lo, hi = dt.integer_range
        lo = max(lo, int(spec.min)) if spec.min is not None else lo
        hi = min(hi, int(spec.max)) if spec.max is not None else hi
        # an integral JSON float (80.0, as many JSON libraries write every number) is the
        # integer 80; 80.5 is not (multiple_of). The int branch is tried first, so a plain
        # integer never touches the Python converter.
        return (
            Annotated[int, Field(ge=lo, le=hi)]
            | Annotated[float, Field(ge=lo, le=hi, multiple_of=1), AfterValidator(int)]
        )
    return Annotated[float, Field(ge=spec.min, le=spec.max, allow_inf_nan=False)]


_Signals = _with_config(_STRICT)(
    TypedDict(  # type: ignore[operator]
        "_Signals",
        {spec.path: NotRequired[_value_type(spec)] for spec in CATALOG.values()},
    )
)
#: 0 is a valid seq; the upper bound is the largest integer a JSON parser using doubles
#: (JavaScript, many embedded libraries) holds exactly
MAX_SEQ = 2**53 - 1
_Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
_Ts = Annotated[int, Field(ge=0, le=2**53)]


@_with_config(_STRICT)
class _BatchItem(TypedDict):
    seq: _Seq
    ts: _Ts
    signals: _Signals  # type: ignore[valid-type]


def _envelope_type(limits: Limits) -> Any:
    @_with_config(_STRICT)
    class _Envelope(TypedDict, total=False):
        vin: Required[Annotated[str, StringConstraints(pattern=VIN_PATTERN)]]
        seq: _Seq
        ts: _Ts
        signals: _Signals  # type: ignore[valid-type]
        samples: Annotated[
            list[_BatchItem], Field(min_length=1, max_length=limits.max_batch_samples)
        ]

    return _Envelope


_ADAPTERS: dict[Limits, TypeAdapter[Any]] = {}


def _adapter(limits: Limits) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(limits)
    if adapter is None:
        adapter = _ADAPTERS[limits] = TypeAdapter(_envelope_type(limits))
    return adapter


_SIGNALS_ADAPTER: TypeAdapter[dict[str, SignalValue]] = TypeAdapter(_Signals)

# --- decoding ------------------------------------------------------------------------------

_RANGE_ERRORS = frozenset(
    {"greater_than_equal", "less_than_equal", "greater_than", "less_than", "finite_number"}
)


def _signal_reason(error_type: str) -> Reason:
    if error_type == "extra_forbidden":
        return Reason.UNKNOWN_SIGNAL
    if error_type in _RANGE_ERRORS:
        return Reason.OUT_OF_RANGE
    if error_type == "literal_error":
        return Reason.VALUE_NOT_ALLOWED
    return Reason.WRONG_TYPE


#: the names pydantic gives the members of a union in an error's location
#: (``constrained-int``, ``function-after[int(), constrained-float]``): an integer signal
#: is one (integer, or integral float), and a unit's engineer reads the location in the
#: feedback notice, where only the field and the signal path mean anything
_UNION_MEMBER = re.compile(r"^(?:constrained-[a-z]+|function-[a-z]+\[.*\])$")


#: what an unknown key is, in words a unit's engineer can act on (pydantic says "Extra
#: inputs are not permitted", which named neither the catalog nor the contract)
UNKNOWN_SIGNAL_TEXT: Final = (
    "not a signal of the catalog (GET /v1/catalog lists the accepted VSS paths; names are "
    "case-sensitive)"
)
UNKNOWN_FIELD_TEXT: Final = (
    "not a field of this message in device contract v1 (docs/device-contract.md: a field "
    "it does not define refuses the message)"
)


def _describe(error: Any) -> str:
    parts = [str(p) for p in error["loc"] if not _UNION_MEMBER.match(str(p))]
    loc = ".".join(parts) or "payload"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r:.80})"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        in_signals = len(parts) >= 2 and parts[-2] == "signals"
        message = UNKNOWN_SIGNAL_TEXT if in_signals else UNKNOWN_FIELD_TEXT
    return f"{loc}: {message}{shown}"


def _signal_errors(errors: Sequence[Any]) -> dict[tuple[int | None, str], Any] | None:
    """Map (batch index or None, signal path) -> the error that decides its reason, or None
    if any error is not about one signal (then the whole message is rejected).

    An integer signal is a union (integer, or integral float), so it can fail twice: 300.0
    for a uint8 is a type error for the integer branch and a range error for the float one.
    A range error wins (the value is a number, just too big); otherwise the first error."""
    found: dict[tuple[int | None, str], Any] = {}
    for error in errors:
        loc = error["loc"]
        if len(loc) >= 2 and loc[0] == "signals" and isinstance(loc[1], str):
            key: tuple[int | None, str] = (None, loc[1])
        elif (
            len(loc) >= 4
            and loc[0] == "samples"
            and isinstance(loc[1], int)
            and loc[2] == "signals"
            and isinstance(loc[3], str)
        ):
            key = (loc[1], loc[3])
        else:
            return None
        held = found.get(key)
        if held is None or (error["type"] in _RANGE_ERRORS and held["type"] not in _RANGE_ERRORS):
            found[key] = error
    return found


def _message_reason(errors: Sequence[Any]) -> Reason:
    first = errors[0]
    if first["type"] == "json_invalid":
        return Reason.MALFORMED_JSON
    if any(e["loc"][:1] == ("vin",) and e["type"] == "string_pattern_mismatch" for e in errors):
        return Reason.INVALID_VIN
    return Reason.INVALID_ENVELOPE


def decode_telemetry(
    payload: bytes,
    *,
    topic_vin: str,
    now_ms: int,
    limits: Limits = DEFAULT_LIMITS,
) -> DecodedTelemetry:
    """Decode one telemetry message published on ``v1/vehicles/{topic_vin}/telemetry``.

    Never raises for bad input: everything wrong comes back as :class:`Rejection` values.
    """
    if len(payload) > limits.max_payload_bytes:
        return _reject(
            Reason.PAYLOAD_TOO_LARGE,
            f"payload is {len(payload)} bytes; the limit is {limits.max_payload_bytes}",
            vin=topic_vin,
        )
    validated = _validate_envelope(payload, _adapter(limits), topic_vin)
    if isinstance(validated, DecodedTelemetry):
        return validated
    envelope, rejections = validated
    if (twice := duplicate_key(payload, _telemetry_members(envelope))) is not None:
        return DecodedTelemetry((), (duplicate_rejection(twice, vin=topic_vin),))
    vin: str = envelope["vin"]
    if vin != topic_vin:
        return _reject(
            Reason.VIN_MISMATCH,
            f"payload vin {vin!r} differs from the topic's vin {topic_vin!r}",
            vin=topic_vin,
        )
    items = _envelope_items(envelope, vin)
    if isinstance(items, DecodedTelemetry):
        return items
    samples = _timely_samples(items, vin, now_ms, limits, rejections)
    # rejections of signals whose sample was rejected as a whole are kept: both are true
    return DecodedTelemetry(tuple(samples), listed(rejections))


def _telemetry_members(envelope: Any) -> int:
    """:func:`~schemas.duplicates.member_count` of a validated telemetry envelope, from its
    shape (a signal's value holds no object), so a batch costs one step per sample."""
    count = len(envelope)
    signals = envelope.get("signals")
    if signals is not None:
        count += len(signals)
    items = envelope.get("samples")
    if items is not None:
        for item in items:
            count += len(item) + len(item["signals"])
    return count


def duplicate_rejection(name: str, *, vin: str | None) -> Rejection:
    """The refusal of a message with the member name ``name`` twice in one object."""
    return Rejection(
        Reason.DUPLICATE_KEY,
        f"the name {name!r:.80} occurs twice in one JSON object; each name may occur once "
        "(parsers disagree on which value would count: docs/device-contract.md §3)",
        vin=vin,
    )


def _duplicate(payload: bytes, parsed: Any, vin: str | None) -> Rejection | None:
    twice = duplicate_key(payload, member_count(parsed))
    return None if twice is None else duplicate_rejection(twice, vin=vin)


def _validate_envelope(
    payload: bytes, adapter: TypeAdapter[Any], topic_vin: str
) -> tuple[Any, list[Rejection]] | DecodedTelemetry:
    """The validated envelope and the rejections of the signals dropped from it (a message
    whose only faults are bad signals keeps the rest), or the message's rejection."""
    try:
        return adapter.validate_json(payload), []
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        by_signal = _signal_errors(errors)
        if by_signal is None:
            reason = _message_reason(errors)
            return _reject(reason, "; ".join(_describe(e) for e in errors[:5]), vin=topic_vin)
        try:
            return _drop_bad_signals(payload, by_signal, adapter)
        except ValidationError as again:
            errors = again.errors(include_url=False)
            return _reject(
                Reason.INVALID_ENVELOPE, "; ".join(_describe(e) for e in errors[:5]), vin=topic_vin
            )


def _envelope_items(envelope: Any, vin: str) -> list[Any] | DecodedTelemetry:
    """The samples of a message: one sample, or a batch's; a rejection if it is neither."""
    items = envelope.get("samples")
    if items is None:
        missing = [k for k in ("seq", "ts", "signals") if k not in envelope]
        if missing:
            return _reject(
                Reason.INVALID_ENVELOPE,
                "a sample needs seq, ts and signals (or a batch needs samples); "
                f"missing: {', '.join(missing)}",
                vin=vin,
            )
        return [envelope]
    if any(k in envelope for k in ("seq", "ts", "signals")):
        return _reject(
            Reason.INVALID_ENVELOPE,
            "a message is either one sample (seq, ts, signals) or a batch (samples), not both",
            vin=vin,
        )
    return cast("list[Any]", items)


def _timely_samples(
    items: list[Any], vin: str, now_ms: int, limits: Limits, rejections: list[Rejection]
) -> list[Sample]:
    """The samples whose timestamps are plausible; a rejection in ``rejections`` for each
    of the others."""
    horizon = now_ms + limits.max_future_skew_ms
    samples: list[Sample] = []
    for item in items:
        if item["ts"] < limits.min_plausible_ts_ms:
            rejections.append(
                Rejection(
                    Reason.IMPLAUSIBLE_TIMESTAMP,
                    _implausible(item["ts"], limits),
                    vin=vin,
                    seq=item["seq"],
                )
            )
            continue
        if item["ts"] > horizon:
            rejections.append(
                Rejection(
                    Reason.FUTURE_TIMESTAMP,
                    _ahead(item["ts"], now_ms, limits),
                    vin=vin,
                    seq=item["seq"],
                )
            )
            continue
        samples.append(Sample(vin, item["seq"], item["ts"], item["signals"]))
    return samples


def _ahead(ts: int, now_ms: int, limits: Limits) -> str:
    return (
        f"ts {ts} is {ts - now_ms} ms ahead of the gateway clock "
        f"(limit {limits.max_future_skew_ms} ms)"
    )


def _implausible(ts: int, limits: Limits) -> str:
    seconds = limits.min_plausible_ts_ms // 1000 <= ts < 10**11
    hint = " (seconds instead of milliseconds?)" if seconds else ""
    return (
        f"ts {ts} is before {limits.min_plausible_ts_ms} (2020-01-01T00:00:00Z){hint}: ts is "
        "milliseconds since the Unix epoch from a synchronised clock; a sample taken before "
        "the clock was set cannot be placed in time"
    )


def _reject(reason: Reason, detail: str, *, vin: str | None) -> DecodedTelemetry:
    return DecodedTelemetry((), (Rejection(reason, detail, vin=vin),))


def _drop_bad_signals(
    payload: bytes,
    by_signal: Mapping[tuple[int | None, str], Any],
    adapter: TypeAdapter[Any],
) -> tuple[Any, list[Rejection]]:
    """Remove the signals that failed and validate the rest again."""
    raw = pydantic_core.from_json(payload)  # like the validator, it accepts NaN/Infinity
    rejections: list[Rejection] = []
    for (index, path), error in by_signal.items():
        holder = raw if index is None else raw["samples"][index]
        holder["signals"].pop(path, None)
        seq = holder.get("seq")
        # beyond the ones listed, only counted (listed()): not worth describing each
        listed_one = len(rejections) < REJECTIONS_LISTED_PER_MESSAGE
        rejections.append(
            Rejection(
                _signal_reason(error["type"]),
                _describe(error) if listed_one else "",
                vin=raw.get("vin") if isinstance(raw.get("vin"), str) else None,
                seq=seq if isinstance(seq, int) else None,
                signal=path,
            )
        )
    return adapter.validate_python(raw), rejections


def validate_signals(signals: Mapping[str, Any]) -> dict[str, SignalValue]:
    """Check a signal mapping against the catalog (raises ``pydantic.ValidationError``)."""
    return _SIGNALS_ADAPTER.validate_python(dict(signals))


# --- encoding ---------------------------------------------------------------------------------


def encode_sample(sample: Sample) -> bytes:
    return orjson.dumps(
        {"vin": sample.vin, "seq": sample.seq, "ts": sample.ts, "signals": sample.signals}
    )


def encode_batch(vin: str, samples: Iterable[Sample]) -> bytes:
    return orjson.dumps(
        {
            "vin": vin,
            "samples": [{"seq": s.seq, "ts": s.ts, "signals": s.signals} for s in samples],
        }
    )


# --- events and status ------------------------------------------------------------------------


class EventType(enum.StrEnum):
    DTC_SET = "dtc_set"
    DTC_CLEARED = "dtc_cleared"
    IGNITION_ON = "ignition_on"
    IGNITION_OFF = "ignition_off"


@dataclass(frozen=True, slots=True)
class Event:
    """A vehicle-side event on ``v1/vehicles/{vin}/events``.

    ``{"vin": ..., "seq": 7, "ts": 1764230400000, "type": "dtc_set", "code": "P0301"}``;
    ``seq`` counts events per vehicle, separately from telemetry.
    """

    vin: str
    seq: int
    ts: int
    type: EventType
    code: str | None = None
    detail: str | None = None


@_with_config(_STRICT)
class _EventIn(TypedDict):
    vin: Annotated[str, StringConstraints(pattern=VIN_PATTERN)]
    seq: _Seq
    ts: _Ts
    type: EventType
    code: NotRequired[Annotated[str, StringConstraints(pattern=r"^[PCBU][0-9A-F]{4}$")]]
    detail: NotRequired[Annotated[str, StringConstraints(max_length=512)]]


_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(_EventIn)


def encode_event(event: Event) -> bytes:
    body: dict[str, object] = {
        "vin": event.vin,
        "seq": event.seq,
        "ts": event.ts,
        "type": event.type.value,
    }
    if event.code is not None:
        body["code"] = event.code
    if event.detail is not None:
        body["detail"] = event.detail
    return orjson.dumps(body)


def decode_event(
    payload: bytes, *, topic_vin: str, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> Event | Rejection:
    if len(payload) > limits.max_payload_bytes:
        return Rejection(
            Reason.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes", vin=topic_vin
        )
    try:
        raw = _EVENT_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        return Rejection(
            _message_reason(errors), "; ".join(_describe(e) for e in errors[:5]), vin=topic_vin
        )
    if (twice := _duplicate(payload, raw, topic_vin)) is not None:
        return twice
    if raw["vin"] != topic_vin:
        return Rejection(
            Reason.VIN_MISMATCH,
            f"payload vin {raw['vin']!r} differs from the topic's vin {topic_vin!r}",
            vin=topic_vin,
        )
    if raw["ts"] < limits.min_plausible_ts_ms:
        return Rejection(
            Reason.IMPLAUSIBLE_TIMESTAMP,
            _implausible(raw["ts"], limits),
            vin=topic_vin,
            seq=raw["seq"],
        )
    if raw["ts"] > now_ms + limits.max_future_skew_ms:
        return Rejection(
            Reason.FUTURE_TIMESTAMP,
            _ahead(raw["ts"], now_ms, limits),
            vin=topic_vin,
            seq=raw["seq"],
        )
    if raw["type"] in (EventType.DTC_SET, EventType.DTC_CLEARED) and "code" not in raw:
        return Rejection(
            Reason.INVALID_ENVELOPE, f"a {raw['type'].value} event needs a code", vin=topic_vin
        )
    return Event(raw["vin"], raw["seq"], raw["ts"], raw["type"], raw.get("code"), raw.get("detail"))


class StatusState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Status:
    """Retained on ``v1/vehicles/{vin}/status``: ``{"state": "online"}``; the unit's Last Will
    is ``{"state": "offline"}``. ``ts`` is optional (a Last Will is composed at connect time)."""

    state: StatusState
    ts: int | None = None


@_with_config(_STRICT)
class _StatusIn(TypedDict):
    state: StatusState
    ts: NotRequired[_Ts]
    vin: NotRequired[Annotated[str, StringConstraints(pattern=VIN_PATTERN)]]


_STATUS_ADAPTER: TypeAdapter[Any] = TypeAdapter(_StatusIn)


def encode_status(status: Status) -> bytes:
    body: dict[str, object] = {"state": status.state.value}
    if status.ts is not None:
        body["ts"] = status.ts
    return orjson.dumps(body)


def decode_status(payload: bytes, *, topic_vin: str) -> Status | Rejection:
    if len(payload) > 4096:
        return Rejection(
            Reason.PAYLOAD_TOO_LARGE, f"payload is {len(payload)} bytes", vin=topic_vin
        )
    try:
        raw = _STATUS_ADAPTER.validate_json(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        return Rejection(
            _message_reason(errors), "; ".join(_describe(e) for e in errors[:5]), vin=topic_vin
        )
    if (twice := _duplicate(payload, raw, topic_vin)) is not None:
        return twice
    if raw.get("vin", topic_vin) != topic_vin:
        return Rejection(Reason.VIN_MISMATCH, "payload vin differs from the topic's", vin=topic_vin)
    return Status(raw["state"], raw.get("ts"))
