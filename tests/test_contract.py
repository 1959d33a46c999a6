"""The device contract's pure functions: VINs, topics, and payload encode/decode.

No servers and no clock: every decode gets a fixed ``now_ms``. Telemetry payloads that
``encode_sample`` cannot produce (NaN, wrong JSON types, broken JSON) are written by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    CATALOG,
    DEFAULT_LIMITS,
    MAX_SEQ,
    Channel,
    Datatype,
    DecodedTelemetry,
    Event,
    EventType,
    InvalidTopicError,
    InvalidVinError,
    Limits,
    ParsedTopic,
    Reason,
    Rejection,
    Sample,
    SignalSpec,
    SignalValue,
    Status,
    StatusState,
    decode_event,
    decode_status,
    decode_telemetry,
    encode_batch,
    encode_event,
    encode_sample,
    encode_status,
    is_valid_vin,
    parse_topic,
    subscription_filters,
    topic_for,
    validate_vin,
)

VIN = "WVWZZZ1JZXW000001"
OTHER_VIN = "WVWZZZ1JZXW000002"
# 2025-11-27 08:00 UTC: the gateway's clock in every decode
NOW = 1_764_230_400_000
TS = NOW - 1_000
SEQ = 7
HORIZON = NOW + DEFAULT_LIMITS.max_future_skew_ms

SPEED = "Vehicle.Speed"
IS_MOVING = "Vehicle.IsMoving"
ODOMETER = "Vehicle.TraveledDistance"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
CHARGE_LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
TIRE = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"
LV_STATE = "Vehicle.LowVoltageSystemState"
DTC_COUNT = "Vehicle.Diagnostics.DTCCount"
DTC_LIST = "Vehicle.Diagnostics.DTCList"

GOOD_SIGNALS: dict[str, SignalValue] = {
    SPEED: 48.5,
    IS_MOVING: True,
    ODOMETER: 123_456_789,
    LAT: 48.137154,
    LON: 11.576124,
    CHARGE_LIMIT: 80,
    TIRE: 250,
    LV_STATE: "ON",
    DTC_COUNT: 2,
    DTC_LIST: ["P0301", "U0100"],
}


def decode(payload: bytes, *, limits: Limits = DEFAULT_LIMITS) -> DecodedTelemetry:
    return decode_telemetry(payload, topic_vin=VIN, now_ms=NOW, limits=limits)


def body(**fields: Any) -> bytes:
    """A telemetry payload: one sample of VIN unless fields say otherwise (None drops a key)."""
    message: dict[str, Any] = {"vin": VIN, "seq": SEQ, "ts": TS, "signals": {SPEED: 48.5}}
    message.update(fields)
    return orjson.dumps({k: v for k, v in message.items() if v is not None})


def batch_item(seq: int, ts: int = TS, /, **signals: SignalValue) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "signals": signals}


def with_raw_signal(path: str, raw_json: str) -> bytes:
    """One sample whose signal ``path`` is the literal JSON ``raw_json``, next to LAT."""
    assert path != LAT, "LAT is the good signal that must survive"
    return (
        f'{{"vin": "{VIN}", "seq": {SEQ}, "ts": {TS}, '
        f'"signals": {{"{LAT}": 48.137, "{path}": {raw_json}}}}}'
    ).encode()


def sole_rejection(decoded: DecodedTelemetry) -> Rejection:
    assert len(decoded.rejections) == 1, decoded.rejections
    return decoded.rejections[0]


# --- VIN ------------------------------------------------------------------------------------

VALID_VINS = [
    "WVWZZZ1JZXW000001",  # VW, no check digit (Europe)
    "1HGCM82633A004352",  # Honda, North American check digit
    "5YJ3E1EA7KF317000",  # Tesla
    "JH4KA7561PC008269",
    "WBA3A5G59DNP26082",
    "00000000000000000",
    "ABCDEFGHJKLMNPRST",  # every letter position allowed
    "UVWXYZ98765432100",
]

INVALID_VINS = [
    pytest.param("WVWZZZ1JZXW00000", id="16-chars"),
    pytest.param("WVWZZZ1JZXW0000011", id="18-chars"),
    pytest.param("wvwzzz1jzxw000001", id="lowercase"),
    pytest.param("WVWZZZ1JZXw000001", id="one-lowercase"),
    pytest.param("WVWZZZ1JZXI000001", id="letter-I"),
    pytest.param("WVWZZZ1JZXO000001", id="letter-O"),
    pytest.param("WVWZZZ1JZXQ000001", id="letter-Q"),
    pytest.param("", id="empty"),
    pytest.param("WVWZZZ1JZX 000001", id="space"),
    pytest.param("WVWZZZ-1JZXW00001", id="hyphen"),
    pytest.param("WVWZZZ1JZXW000001\n", id="trailing-newline"),
    pytest.param(" WVWZZZ1JZXW00001", id="leading-space"),
    pytest.param("WVWZZZ1JZXW00000\uff11", id="fullwidth-digit"),
]


@pytest.mark.parametrize("vin", VALID_VINS, ids=VALID_VINS)
def test_valid_vin(vin: str) -> None:
    assert is_valid_vin(vin)
    assert validate_vin(vin) == vin


@pytest.mark.parametrize("vin", INVALID_VINS)
def test_invalid_vin(vin: str) -> None:
    assert not is_valid_vin(vin)
    with pytest.raises(InvalidVinError) as info:
        validate_vin(vin)
    assert isinstance(info.value, ValueError)
    assert info.value.vin == vin
    assert repr(vin) in str(info.value)


# --- topics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", list(Channel), ids=[c.value for c in Channel])
def test_topic_round_trip(channel: Channel) -> None:
    topic = topic_for(VIN, channel)
    assert topic == f"v1/vehicles/{VIN}/{channel.value}"
    assert parse_topic(topic) == ParsedTopic(VIN, channel)


@pytest.mark.parametrize("channel", list(Channel), ids=[c.value for c in Channel])
def test_subscription_filters_cover_every_channel(channel: Channel) -> None:
    assert f"v1/vehicles/+/{channel.value}" in subscription_filters()
    assert len(subscription_filters()) == len(Channel)


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        pytest.param(f"v2/vehicles/{VIN}/telemetry", "does not start with", id="wrong-version"),
        pytest.param(f"vehicles/{VIN}/telemetry", "does not start with", id="no-version"),
        pytest.param(f"/v1/vehicles/{VIN}/telemetry", "does not start with", id="leading-slash"),
        pytest.param(f"v1/vehicle/{VIN}/telemetry", "does not start with", id="singular"),
        pytest.param(f"V1/VEHICLES/{VIN}/telemetry", "does not start with", id="uppercase-prefix"),
        pytest.param("", "does not start with", id="empty"),
        pytest.param(f"v1/vehicles/{VIN}/telemetry/extra", "expected v1/vehicles/", id="extra"),
        pytest.param(f"v1/vehicles/{VIN}/telemetry/", "expected v1/vehicles/", id="trailing-slash"),
        pytest.param(f"v1/vehicles/{VIN}", "expected v1/vehicles/", id="no-channel"),
        pytest.param("v1/vehicles/", "expected v1/vehicles/", id="prefix-only"),
        pytest.param("v1/vehicles/wvwzzz1jzxw000001/telemetry", "not a valid VIN", id="lower-vin"),
        pytest.param("v1/vehicles/WVWZZZ1JZXW00000/telemetry", "not a valid VIN", id="short-vin"),
        pytest.param("v1/vehicles/+/telemetry", "not a valid VIN", id="wildcard-vin"),
        pytest.param("v1/vehicles//telemetry", "not a valid VIN", id="empty-vin"),
        pytest.param(f"v1/vehicles/{VIN}/commands", "unknown channel 'commands'", id="commands"),
        pytest.param(f"v1/vehicles/{VIN}/Telemetry", "unknown channel", id="channel-case"),
        pytest.param(f"v1/vehicles/{VIN}/", "unknown channel ''", id="empty-channel"),
        pytest.param(f"v1/vehicles/{VIN}/#", "unknown channel", id="wildcard-channel"),
    ],
)
def test_parse_topic_rejects(topic: str, why: str) -> None:
    with pytest.raises(InvalidTopicError) as info:
        parse_topic(topic)
    assert isinstance(info.value, ValueError)
    assert info.value.topic == topic
    assert why in info.value.why
    assert repr(topic) in str(info.value)
    assert info.value.why in str(info.value)


def test_unknown_channel_reason_lists_known_channels() -> None:
    with pytest.raises(InvalidTopicError) as info:
        parse_topic(f"v1/vehicles/{VIN}/commands")
    assert all(c.value in info.value.why for c in Channel)


# --- telemetry: round trips -------------------------------------------------------------------


def test_single_sample_round_trip() -> None:
    sample = Sample(VIN, SEQ, TS, GOOD_SIGNALS)
    decoded = decode(encode_sample(sample))
    assert decoded == DecodedTelemetry((sample,), ())
    assert {k: type(v) for k, v in decoded.samples[0].signals.items()} == {
        k: type(v) for k, v in GOOD_SIGNALS.items()
    }


def test_empty_signals_round_trip() -> None:
    sample = Sample(VIN, 0, TS, {})
    assert decode(encode_sample(sample)) == DecodedTelemetry((sample,), ())


def test_batch_round_trip() -> None:
    samples = [
        Sample(VIN, 100, TS - 2_000, {SPEED: 10.0, LV_STATE: "ACC"}),
        Sample(VIN, 101, TS - 1_000, {SPEED: 20.25, IS_MOVING: True}),
        Sample(VIN, 102, TS, {DTC_LIST: [], DTC_COUNT: 0}),
    ]
    decoded = decode(encode_batch(VIN, samples))
    assert decoded == DecodedTelemetry(tuple(samples), ())


def test_single_sample_in_a_batch_round_trip() -> None:
    sample = Sample(VIN, SEQ, TS, {SPEED: 1.0})
    assert decode(encode_batch(VIN, [sample])) == DecodedTelemetry((sample,), ())


# --- telemetry: boundaries that are still accepted --------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        pytest.param(SPEED, 400.0, id="speed-max"),
        pytest.param(SPEED, -60.0, id="speed-min"),
        pytest.param(SPEED, 48, id="int-for-float"),
        pytest.param(LAT, -90.0, id="lat-min"),
        pytest.param(LAT, 90.0, id="lat-max"),
        pytest.param(DTC_COUNT, 0, id="uint8-0"),
        pytest.param(DTC_COUNT, 255, id="uint8-255"),
        pytest.param(CHARGE_LIMIT, 100, id="charge-limit-100"),
        pytest.param(ODOMETER, 2**32 - 1, id="uint32-max"),
        pytest.param(TIRE, 1000, id="tire-product-max"),
        pytest.param(LV_STATE, "START", id="allowed-string"),
        pytest.param(DTC_LIST, ["P0301", "C1234", "B0001", "U0100"], id="dtc-list"),
        pytest.param(DTC_LIST, [], id="dtc-list-empty"),
    ],
)
def test_boundary_values_accepted(path: str, value: SignalValue) -> None:
    decoded = decode(body(signals={path: value}))
    assert decoded == DecodedTelemetry((Sample(VIN, SEQ, TS, {path: value}),), ())


def test_dtc_list_is_a_list_of_strings() -> None:
    decoded = decode(body(signals={DTC_LIST: ["P0301"]}))
    (sample,) = decoded.samples
    assert sample.signals[DTC_LIST] == ["P0301"]
    assert decoded.rejections == ()


def test_payload_at_the_size_limit_accepted() -> None:
    payload = body()
    padded = payload + b" " * (DEFAULT_LIMITS.max_payload_bytes - len(payload))
    assert len(padded) == DEFAULT_LIMITS.max_payload_bytes
    assert decode(padded).rejections == ()


def test_timestamp_at_the_skew_limit_accepted() -> None:
    decoded = decode(body(ts=HORIZON))
    assert decoded == DecodedTelemetry((Sample(VIN, SEQ, HORIZON, {SPEED: 48.5}),), ())


def test_batch_at_the_sample_limit_accepted() -> None:
    items = [batch_item(i) for i in range(DEFAULT_LIMITS.max_batch_samples)]
    decoded = decode(orjson.dumps({"vin": VIN, "samples": items}))
    assert decoded.rejections == ()
    assert [s.seq for s in decoded.samples] == list(range(DEFAULT_LIMITS.max_batch_samples))


# --- telemetry: whole-message rejections ------------------------------------------------------

_EMPTY = {"vin": VIN, "samples": []}
_TOO_MANY = {"vin": VIN, "samples": [batch_item(i) for i in range(1001)]}


def _too_large() -> bytes:
    payload = body()
    return payload + b" " * (DEFAULT_LIMITS.max_payload_bytes - len(payload) + 1)


MESSAGE_CASES = [
    # payload_too_large
    pytest.param(_too_large(), Reason.PAYLOAD_TOO_LARGE, id="too-large-by-one-byte"),
    pytest.param(b"x" * (10 * 1024 * 1024), Reason.PAYLOAD_TOO_LARGE, id="too-large-10mib"),
    # malformed_json
    pytest.param(b"{", Reason.MALFORMED_JSON, id="unclosed-brace"),
    pytest.param(b"not json", Reason.MALFORMED_JSON, id="text"),
    pytest.param(b"", Reason.MALFORMED_JSON, id="empty"),
    pytest.param(b"\xff\xfe", Reason.MALFORMED_JSON, id="not-utf8"),
    pytest.param(body()[:-1], Reason.MALFORMED_JSON, id="truncated"),
    pytest.param(b'{"vin": "' + VIN.encode() + b'",}', Reason.MALFORMED_JSON, id="trailing-comma"),
    pytest.param(body() + b"{}", Reason.MALFORMED_JSON, id="two-documents"),
    # invalid_envelope
    pytest.param(body(seq=None), Reason.INVALID_ENVELOPE, id="missing-seq"),
    pytest.param(body(ts=None), Reason.INVALID_ENVELOPE, id="missing-ts"),
    pytest.param(body(signals=None), Reason.INVALID_ENVELOPE, id="missing-signals"),
    pytest.param(body(vin=None), Reason.INVALID_ENVELOPE, id="missing-vin"),
    pytest.param(
        body(samples=[batch_item(SEQ + 1)]), Reason.INVALID_ENVELOPE, id="samples-and-seq"
    ),
    pytest.param(
        body(signals=None, ts=None, samples=[batch_item(SEQ + 1)]),
        Reason.INVALID_ENVELOPE,
        id="samples-and-seq-only",
    ),
    pytest.param(orjson.dumps(_TOO_MANY), Reason.INVALID_ENVELOPE, id="batch-over-limit"),
    pytest.param(orjson.dumps(_EMPTY), Reason.INVALID_ENVELOPE, id="empty-batch"),
    pytest.param(b"[]", Reason.INVALID_ENVELOPE, id="json-array"),
    pytest.param(b'"hello"', Reason.INVALID_ENVELOPE, id="json-string"),
    pytest.param(b"42", Reason.INVALID_ENVELOPE, id="json-number"),
    pytest.param(b"null", Reason.INVALID_ENVELOPE, id="json-null"),
    pytest.param(body(extra=1), Reason.INVALID_ENVELOPE, id="unknown-top-level-key"),
    pytest.param(body(seq=-1), Reason.INVALID_ENVELOPE, id="negative-seq"),
    pytest.param(body(seq=MAX_SEQ + 1), Reason.INVALID_ENVELOPE, id="seq-over-2-53"),
    pytest.param(body(seq="7"), Reason.INVALID_ENVELOPE, id="seq-as-string"),
    pytest.param(body(seq=7.0), Reason.INVALID_ENVELOPE, id="seq-as-float"),
    pytest.param(body(ts=-1), Reason.INVALID_ENVELOPE, id="negative-ts"),
    pytest.param(body(ts=str(TS)), Reason.INVALID_ENVELOPE, id="ts-as-string"),
    pytest.param(body(vin=12345), Reason.INVALID_ENVELOPE, id="vin-not-a-string"),
    pytest.param(body(signals=[1, 2]), Reason.INVALID_ENVELOPE, id="signals-not-an-object"),
    pytest.param(
        orjson.dumps({"vin": VIN, "samples": [{"ts": TS, "signals": {}}]}),
        Reason.INVALID_ENVELOPE,
        id="batch-item-missing-seq",
    ),
    pytest.param(
        orjson.dumps({"vin": VIN, "samples": {"seq": 1}}),
        Reason.INVALID_ENVELOPE,
        id="samples-not-a-list",
    ),
    # invalid_vin: the payload's own vin is malformed
    pytest.param(body(vin=VIN.lower()), Reason.INVALID_VIN, id="lowercase-vin"),
    pytest.param(body(vin=VIN[:-1]), Reason.INVALID_VIN, id="16-char-vin"),
    pytest.param(body(vin="WVWZZZ1JZXO000001"), Reason.INVALID_VIN, id="vin-with-O"),
    pytest.param(body(vin=VIN + "\n"), Reason.INVALID_VIN, id="vin-trailing-newline"),
    pytest.param(
        body(vin="bad", signals={SPEED: 999}), Reason.INVALID_VIN, id="bad-vin-and-bad-signal"
    ),
    # duplicate_key: a name twice in one object, at any level (decision 0065)
    pytest.param(
        f'{{"vin": "{VIN}", "seq": {SEQ}, "ts": {TS}, '
        f'"signals": {{"{SPEED}": 0.0, "{SPEED}": 250.0}}}}'.encode(),
        Reason.DUPLICATE_KEY,
        id="duplicate-signal",
    ),
    pytest.param(
        f'{{"vin": "{VIN}", "seq": 1, "seq": {SEQ}, "ts": {TS}, "signals": {{}}}}'.encode(),
        Reason.DUPLICATE_KEY,
        id="duplicate-seq",
    ),
    pytest.param(
        f'{{"vin": "{VIN}", "samples": [{{"seq": 1, "ts": {TS}, "ts": {TS}, '
        f'"signals": {{}}}}]}}'.encode(),
        Reason.DUPLICATE_KEY,
        id="duplicate-in-a-batch-item",
    ),
    pytest.param(
        f'{{"vin": "{VIN}", "seq": {SEQ}, "ts": {TS}, '
        f'"signals": {{"{SPEED}": 1.0, "Vehicle.Nope": 1, "{SPEED}" : 2.0}}}}'.encode(),
        Reason.DUPLICATE_KEY,
        id="duplicate-next-to-a-bad-signal",
    ),
    # vin_mismatch
    pytest.param(body(vin=OTHER_VIN), Reason.VIN_MISMATCH, id="other-vin"),
    pytest.param(
        orjson.dumps({"vin": OTHER_VIN, "samples": [batch_item(1)]}),
        Reason.VIN_MISMATCH,
        id="other-vin-batch",
    ),
    pytest.param(
        body(vin=OTHER_VIN, signals={SPEED: 999}),
        Reason.VIN_MISMATCH,
        id="other-vin-and-bad-signal",
    ),
]


@pytest.mark.parametrize(("payload", "reason"), MESSAGE_CASES)
def test_message_rejected(payload: bytes, reason: Reason) -> None:
    decoded = decode(payload)
    assert decoded.samples == ()
    rejection = sole_rejection(decoded)
    assert rejection.reason is reason, rejection.detail
    assert rejection.vin == VIN  # the topic's vin: the one the gateway can trust
    assert rejection.signal is None
    assert rejection.detail


def test_too_large_detail_names_the_limit() -> None:
    limits = Limits(max_payload_bytes=64)
    payload = body()
    assert len(payload) > 64
    rejection = sole_rejection(decode(payload, limits=limits))
    assert rejection.reason is Reason.PAYLOAD_TOO_LARGE
    assert str(len(payload)) in rejection.detail
    assert "64" in rejection.detail


def test_batch_limit_follows_the_limits() -> None:
    limits = Limits(max_batch_samples=3)
    three = orjson.dumps({"vin": VIN, "samples": [batch_item(i) for i in range(3)]})
    four = orjson.dumps({"vin": VIN, "samples": [batch_item(i) for i in range(4)]})
    assert decode(three, limits=limits).rejections == ()
    assert sole_rejection(decode(four, limits=limits)).reason is Reason.INVALID_ENVELOPE


def test_vin_mismatch_detail_names_both_vins() -> None:
    rejection = sole_rejection(decode(body(vin=OTHER_VIN)))
    assert OTHER_VIN in rejection.detail
    assert VIN in rejection.detail


def test_missing_seq_detail_names_it() -> None:
    assert "seq" in sole_rejection(decode(body(seq=None))).detail


# --- telemetry: future timestamps -------------------------------------------------------------


def test_future_timestamp_rejects_the_sample() -> None:
    decoded = decode(body(ts=HORIZON + 1))
    assert decoded.samples == ()
    rejection = sole_rejection(decoded)
    assert rejection.reason is Reason.FUTURE_TIMESTAMP
    assert (rejection.vin, rejection.seq, rejection.signal) == (VIN, SEQ, None)


def test_far_future_timestamp_rejected() -> None:
    rejection = sole_rejection(decode(body(ts=NOW + 365 * 86_400_000)))
    assert rejection.reason is Reason.FUTURE_TIMESTAMP


def test_future_sample_in_a_batch_keeps_the_others() -> None:
    good_before = Sample(VIN, 10, TS - 1_000, {SPEED: 30.0})
    future = Sample(VIN, 11, HORIZON + 1, {SPEED: 31.0})
    good_after = Sample(VIN, 12, TS, {SPEED: 32.0})
    decoded = decode(encode_batch(VIN, [good_before, future, good_after]))
    assert decoded.samples == (good_before, good_after)
    rejection = sole_rejection(decoded)
    assert rejection.reason is Reason.FUTURE_TIMESTAMP
    assert (rejection.vin, rejection.seq, rejection.signal) == (VIN, 11, None)


# --- telemetry: implausible timestamps and the seq range (decisions of docs/device-contract.md)

EPOCH_2020 = DEFAULT_LIMITS.min_plausible_ts_ms


@pytest.mark.parametrize(
    "ts",
    [
        pytest.param(0, id="zero"),
        pytest.param(TS // 1000, id="seconds-instead-of-ms"),
        pytest.param(EPOCH_2020 - 1, id="last-ms-of-2019"),
        pytest.param(86_400_000, id="1970-01-02"),
    ],
)
def test_implausible_timestamp_rejected(ts: int) -> None:
    """``ts: 0`` and seconds instead of milliseconds used to be stored as 1970."""
    decoded = decode(body(ts=ts))
    assert decoded.samples == ()
    rejection = sole_rejection(decoded)
    assert rejection.reason is Reason.IMPLAUSIBLE_TIMESTAMP
    assert (rejection.vin, rejection.seq, rejection.signal) == (VIN, SEQ, None)
    assert str(ts) in rejection.detail


def test_seconds_timestamp_detail_says_so() -> None:
    assert "seconds" in sole_rejection(decode(body(ts=TS // 1000))).detail


def test_first_ms_of_2020_accepted() -> None:
    assert decode(body(ts=EPOCH_2020)).rejections == ()


def test_implausible_sample_in_a_batch_keeps_the_others() -> None:
    good = Sample(VIN, 10, TS, {SPEED: 30.0})
    unset_clock = Sample(VIN, 11, 5_000, {SPEED: 31.0})
    decoded = decode(encode_batch(VIN, [good, unset_clock]))
    assert decoded.samples == (good,)
    rejection = sole_rejection(decoded)
    assert (rejection.reason, rejection.seq) == (Reason.IMPLAUSIBLE_TIMESTAMP, 11)


@pytest.mark.parametrize("seq", [0, 1, MAX_SEQ])
def test_seq_range_accepted(seq: int) -> None:
    """0 is a valid seq (a unit counting from 0 loses nothing); negative and above 2**53 - 1
    are refused (MESSAGE_CASES), for telemetry and events alike."""
    assert decode(body(seq=seq)).samples[0].seq == seq
    event = decode_event(event_body(seq=seq), topic_vin=VIN, now_ms=NOW)
    assert isinstance(event, Event)
    assert event.seq == seq


def test_event_seq_over_the_range_refused() -> None:
    rejection = decode_event(event_body(seq=MAX_SEQ + 1), topic_vin=VIN, now_ms=NOW)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is Reason.INVALID_ENVELOPE


# --- telemetry: number encoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw_json", "value"),
    [
        pytest.param(CHARGE_LIMIT, "80.0", 80, id="uint8-80.0"),
        pytest.param(CHARGE_LIMIT, "1e2", 100, id="uint8-exponent"),
        pytest.param(DTC_COUNT, "-0.0", 0, id="uint8-minus-zero"),
        pytest.param(ODOMETER, "4294967295.0", 2**32 - 1, id="uint32-max-as-float"),
        pytest.param(TIRE, "250.0", 250, id="uint16"),
    ],
)
def test_integral_float_accepted_for_an_integer_signal(
    path: str, raw_json: str, value: int
) -> None:
    """Many JSON libraries write every number as a float: ``80.0`` for a uint is the integer
    80 (stored as an integer), ``80.5`` is refused as wrong_type (SIGNAL_CASES)."""
    decoded = decode(with_raw_signal(path, raw_json))
    assert decoded.rejections == ()
    stored = decoded.samples[0].signals[path]
    assert stored == value
    assert type(stored) is int


# --- telemetry: one bad signal ----------------------------------------------------------------

SIGNAL_CASES = [
    # unknown_signal
    pytest.param("Vehicle.Foo", "1", Reason.UNKNOWN_SIGNAL, id="made-up-path"),
    pytest.param("vehicle.speed", "1.0", Reason.UNKNOWN_SIGNAL, id="wrong-case"),
    pytest.param("Vehicle.Cabin", "1", Reason.UNKNOWN_SIGNAL, id="vss-branch"),
    pytest.param(
        "Vehicle.Powertrain.TractionBattery.StateOfHealth",
        "97.5",
        Reason.UNKNOWN_SIGNAL,
        id="vss-signal-not-in-catalog",
    ),
    pytest.param("", "1", Reason.UNKNOWN_SIGNAL, id="empty-path"),
    # wrong_type
    pytest.param(SPEED, '"48.5"', Reason.WRONG_TYPE, id="string-for-float"),
    pytest.param(DTC_COUNT, "1.5", Reason.WRONG_TYPE, id="fraction-for-uint8"),
    pytest.param(CHARGE_LIMIT, "80.5", Reason.WRONG_TYPE, id="fraction-float-for-uint8"),
    pytest.param(SPEED, "true", Reason.WRONG_TYPE, id="bool-for-float"),
    pytest.param(DTC_COUNT, "false", Reason.WRONG_TYPE, id="bool-for-uint8"),
    pytest.param(IS_MOVING, "1", Reason.WRONG_TYPE, id="int-for-bool"),
    pytest.param(IS_MOVING, '"true"', Reason.WRONG_TYPE, id="string-for-bool"),
    pytest.param(SPEED, "null", Reason.WRONG_TYPE, id="null-for-float"),
    pytest.param(SPEED, "[48.5]", Reason.WRONG_TYPE, id="list-for-float"),
    pytest.param(DTC_LIST, '"P0301"', Reason.WRONG_TYPE, id="string-for-string-array"),
    pytest.param(DTC_LIST, '["P0301", 5]', Reason.WRONG_TYPE, id="int-in-string-array"),
    # out_of_range
    pytest.param(SPEED, "400.5", Reason.OUT_OF_RANGE, id="above-max"),
    pytest.param(SPEED, "-60.5", Reason.OUT_OF_RANGE, id="below-min"),
    pytest.param(SPEED, "NaN", Reason.OUT_OF_RANGE, id="nan"),
    pytest.param(SPEED, "Infinity", Reason.OUT_OF_RANGE, id="infinity"),
    pytest.param(SPEED, "-Infinity", Reason.OUT_OF_RANGE, id="minus-infinity"),
    pytest.param(SPEED, "1e400", Reason.OUT_OF_RANGE, id="overflows-to-infinity"),
    pytest.param(LON, "-180.000001", Reason.OUT_OF_RANGE, id="longitude-below-180"),
    pytest.param(DTC_COUNT, "256", Reason.OUT_OF_RANGE, id="uint8-256"),
    pytest.param(DTC_COUNT, "-1", Reason.OUT_OF_RANGE, id="uint8-negative"),
    pytest.param(CHARGE_LIMIT, "101", Reason.OUT_OF_RANGE, id="uint8-above-vss-max"),
    # an integral float is a number of the right kind, just too big: out of range, not a type
    pytest.param(CHARGE_LIMIT, "101.0", Reason.OUT_OF_RANGE, id="integral-float-above-max"),
    pytest.param(DTC_COUNT, "-1.0", Reason.OUT_OF_RANGE, id="integral-float-negative-uint8"),
    pytest.param(DTC_COUNT, "NaN", Reason.OUT_OF_RANGE, id="nan-for-uint8"),
    pytest.param(ODOMETER, str(2**32), Reason.OUT_OF_RANGE, id="uint32-overflow"),
    pytest.param(ODOMETER, str(2**70), Reason.OUT_OF_RANGE, id="huge-int"),
    pytest.param(TIRE, "1001", Reason.OUT_OF_RANGE, id="above-product-max"),
    # value_not_allowed
    pytest.param(LV_STATE, '"FOO"', Reason.VALUE_NOT_ALLOWED, id="unknown-state"),
    pytest.param(LV_STATE, '"on"', Reason.VALUE_NOT_ALLOWED, id="state-wrong-case"),
    pytest.param(LV_STATE, '""', Reason.VALUE_NOT_ALLOWED, id="state-empty"),
    # a non-string for a string with allowed values: the strict decoder checks the literal
    # values only, so this is value_not_allowed (a free string would say wrong_type)
    pytest.param(LV_STATE, "4", Reason.VALUE_NOT_ALLOWED, id="int-for-enum-string"),
    pytest.param(LV_STATE, "null", Reason.VALUE_NOT_ALLOWED, id="null-for-enum-string"),
]


@pytest.mark.parametrize(("path", "raw_json", "reason"), SIGNAL_CASES)
def test_bad_signal_rejected_alone(path: str, raw_json: str, reason: Reason) -> None:
    decoded = decode(with_raw_signal(path, raw_json))
    # the sample survives with its good signal
    assert decoded.samples == (Sample(VIN, SEQ, TS, {LAT: 48.137}),)
    rejection = sole_rejection(decoded)
    assert rejection.reason is reason, rejection.detail
    assert rejection.signal == path
    assert (rejection.vin, rejection.seq) == (VIN, SEQ)
    # the detail (the unit's feedback notice) says where, in the payload's own terms: not
    # the names pydantic gives the members of a union ("constrained-int", "function-after[")
    # (an array's item adds its index)
    where = re.match(rf"signals\.{re.escape(path)}(\.\d+)?: ", rejection.detail)
    assert where is not None, rejection.detail


def test_every_decodable_reason_is_covered() -> None:
    """Each Reason that decode_telemetry can return has a crafted payload above."""
    covered = {p.values[1] for p in MESSAGE_CASES} | {p.values[2] for p in SIGNAL_CASES}
    covered.add(Reason.FUTURE_TIMESTAMP)  # test_future_timestamp_rejects_the_sample
    covered.add(Reason.IMPLAUSIBLE_TIMESTAMP)  # test_implausible_timestamp_rejected
    # invalid_topic comes from parse_topic, before a payload is ever decoded,
    # unknown_command from the command service, which knows which commands exist, and
    # unprovisioned_vehicle from the gateway's registry of provisioned vehicles
    # (tests/test_vehicle_identity.py), correlation_mismatch from the command service, which
    # sees the MQTT 5 properties (tests/test_commands_e2e.py), after_revocation from the
    # gateway's commit, which knows the holding periods (tests/test_ownership.py)
    assert covered == set(Reason) - {
        Reason.INVALID_TOPIC,
        Reason.UNKNOWN_COMMAND,
        Reason.UNPROVISIONED_VEHICLE,
        Reason.CORRELATION_MISMATCH,
        Reason.AFTER_REVOCATION,
    }


def test_several_bad_signals_each_rejected() -> None:
    payload = body(signals={SPEED: 999.0, DTC_COUNT: 256, LV_STATE: "FOO", LAT: 1.0, "X.Y": 1})
    decoded = decode(payload)
    assert decoded.samples == (Sample(VIN, SEQ, TS, {LAT: 1.0}),)
    assert {(r.signal, r.reason) for r in decoded.rejections} == {
        (SPEED, Reason.OUT_OF_RANGE),
        (DTC_COUNT, Reason.OUT_OF_RANGE),
        (LV_STATE, Reason.VALUE_NOT_ALLOWED),
        ("X.Y", Reason.UNKNOWN_SIGNAL),
    }
    assert all((r.vin, r.seq) == (VIN, SEQ) for r in decoded.rejections)


def test_bad_signal_in_a_batch_names_its_sample() -> None:
    payload = orjson.dumps(
        {
            "vin": VIN,
            "samples": [
                batch_item(20, **{SPEED: 10.0}),
                batch_item(21, **{SPEED: 10.5, DTC_COUNT: 256}),
                batch_item(22, **{SPEED: 11.0}),
            ],
        }
    )
    decoded = decode(payload)
    assert decoded.samples == (
        Sample(VIN, 20, TS, {SPEED: 10.0}),
        Sample(VIN, 21, TS, {SPEED: 10.5}),
        Sample(VIN, 22, TS, {SPEED: 11.0}),
    )
    rejection = sole_rejection(decoded)
    assert (rejection.reason, rejection.signal, rejection.vin, rejection.seq) == (
        Reason.OUT_OF_RANGE,
        DTC_COUNT,
        VIN,
        21,
    )


def test_bad_signal_and_missing_seq_rejects_the_message() -> None:
    decoded = decode(body(seq=None, signals={SPEED: 999.0}))
    assert decoded.samples == ()
    assert any(r.reason is Reason.INVALID_ENVELOPE for r in decoded.rejections)


# --- events -----------------------------------------------------------------------------------

EVENTS = [
    pytest.param(Event(VIN, 1, TS, EventType.DTC_SET, "P0301"), id="dtc-set"),
    pytest.param(
        Event(VIN, 2, TS, EventType.DTC_SET, "U0100", "Lost communication with ECM"),
        id="dtc-set-with-detail",
    ),
    pytest.param(Event(VIN, 3, TS, EventType.DTC_CLEARED, "C1234"), id="dtc-cleared"),
    pytest.param(Event(VIN, 4, TS, EventType.IGNITION_ON), id="ignition-on"),
    pytest.param(Event(VIN, 5, HORIZON, EventType.IGNITION_OFF), id="ignition-off-at-skew"),
]


@pytest.mark.parametrize("event", EVENTS)
def test_event_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event), topic_vin=VIN, now_ms=NOW) == event


def event_body(**fields: Any) -> bytes:
    message: dict[str, Any] = {"vin": VIN, "seq": 1, "ts": TS, "type": "dtc_set", "code": "P0301"}
    message.update(fields)
    return orjson.dumps({k: v for k, v in message.items() if v is not None})


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(event_body(code=None), Reason.INVALID_ENVELOPE, id="dtc-set-without-code"),
        pytest.param(
            event_body(type="dtc_cleared", code=None),
            Reason.INVALID_ENVELOPE,
            id="dtc-cleared-without-code",
        ),
        pytest.param(event_body(code="p0301"), Reason.INVALID_ENVELOPE, id="code-lowercase"),
        pytest.param(event_body(code="X0301"), Reason.INVALID_ENVELOPE, id="code-bad-system"),
        pytest.param(event_body(code="P030"), Reason.INVALID_ENVELOPE, id="code-too-short"),
        pytest.param(event_body(code="P03011"), Reason.INVALID_ENVELOPE, id="code-too-long"),
        pytest.param(event_body(code="P030G"), Reason.INVALID_ENVELOPE, id="code-not-hex"),
        pytest.param(event_body(code="P0301\n"), Reason.INVALID_ENVELOPE, id="code-newline"),
        pytest.param(event_body(code=301), Reason.INVALID_ENVELOPE, id="code-not-a-string"),
        pytest.param(event_body(type="exploded"), Reason.INVALID_ENVELOPE, id="unknown-type"),
        pytest.param(event_body(seq=None), Reason.INVALID_ENVELOPE, id="missing-seq"),
        pytest.param(event_body(extra=True), Reason.INVALID_ENVELOPE, id="unknown-key"),
        pytest.param(event_body(vin=OTHER_VIN), Reason.VIN_MISMATCH, id="vin-mismatch"),
        pytest.param(event_body(vin=VIN.lower()), Reason.INVALID_VIN, id="invalid-vin"),
        pytest.param(event_body(ts=HORIZON + 1), Reason.FUTURE_TIMESTAMP, id="future-ts"),
        pytest.param(event_body(ts=0), Reason.IMPLAUSIBLE_TIMESTAMP, id="ts-zero"),
        pytest.param(event_body(ts=NOW // 1000), Reason.IMPLAUSIBLE_TIMESTAMP, id="ts-seconds"),
        pytest.param(event_body(seq=-1), Reason.INVALID_ENVELOPE, id="negative-seq"),
        pytest.param(b"{not json", Reason.MALFORMED_JSON, id="malformed-json"),
        pytest.param(b"[]", Reason.INVALID_ENVELOPE, id="not-an-object"),
        pytest.param(
            event_body(detail="x" * DEFAULT_LIMITS.max_payload_bytes),
            Reason.PAYLOAD_TOO_LARGE,
            id="too-large",
        ),
    ],
)
def test_event_rejected(payload: bytes, reason: Reason) -> None:
    rejection = decode_event(payload, topic_vin=VIN, now_ms=NOW)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is reason, rejection.detail
    assert rejection.vin == VIN
    assert rejection.detail


@pytest.mark.parametrize("ts", [0, HORIZON + 1])
def test_an_event_refused_for_its_time_names_its_seq_and_why(ts: int) -> None:
    """As a sample's: the feedback notice names the event's seq (section 9) and, for a
    clock ahead, by how much and the limit (it said only "is in the future", seq null)."""
    rejection = decode_event(event_body(ts=ts), topic_vin=VIN, now_ms=NOW)
    assert isinstance(rejection, Rejection)
    assert rejection.seq == 1  # event_body's
    if ts > NOW:
        assert rejection.detail == (
            f"ts {ts} is {ts - NOW} ms ahead of the gateway clock "
            f"(limit {DEFAULT_LIMITS.max_future_skew_ms} ms)"
        )


def test_an_ignition_event_may_carry_a_code() -> None:
    """docs/device-contract.md section 6: ``code`` is optional there, checked and kept."""
    body = event_body(type="ignition_on", code="P0301")
    event = decode_event(body, topic_vin=VIN, now_ms=NOW)
    assert isinstance(event, Event)
    assert event.code == "P0301"
    bad = decode_event(event_body(type="ignition_on", code="p0301"), topic_vin=VIN, now_ms=NOW)
    assert isinstance(bad, Rejection)
    assert bad.reason is Reason.INVALID_ENVELOPE


def test_event_bad_code_detail_names_the_code() -> None:
    rejection = decode_event(event_body(code="P030G"), topic_vin=VIN, now_ms=NOW)
    assert isinstance(rejection, Rejection)
    assert "code" in rejection.detail
    assert "P030G" in rejection.detail


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(Status(StatusState.ONLINE, TS), id="online"),
        pytest.param(Status(StatusState.OFFLINE, TS), id="offline"),
        pytest.param(Status(StatusState.ONLINE), id="online-no-ts"),
        pytest.param(Status(StatusState.OFFLINE), id="offline-last-will"),
    ],
)
def test_status_round_trip(status: Status) -> None:
    assert decode_status(encode_status(status), topic_vin=VIN) == status


def test_status_with_its_own_vin_accepted() -> None:
    payload = orjson.dumps({"state": "online", "vin": VIN})
    assert decode_status(payload, topic_vin=VIN) == Status(StatusState.ONLINE)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"garbage", Reason.MALFORMED_JSON, id="garbage"),
        pytest.param(b"", Reason.MALFORMED_JSON, id="empty"),
        pytest.param(b"\x00\x01\x02", Reason.MALFORMED_JSON, id="binary"),
        pytest.param(b'"online"', Reason.INVALID_ENVELOPE, id="bare-string"),
        pytest.param(b"{}", Reason.INVALID_ENVELOPE, id="no-state"),
        pytest.param(b'{"state": "sleeping"}', Reason.INVALID_ENVELOPE, id="unknown-state"),
        pytest.param(b'{"state": "ONLINE"}', Reason.INVALID_ENVELOPE, id="state-case"),
        pytest.param(b'{"state": "online", "x": 1}', Reason.INVALID_ENVELOPE, id="unknown-key"),
        pytest.param(b'{"state": "online", "ts": -5}', Reason.INVALID_ENVELOPE, id="negative-ts"),
        pytest.param(
            orjson.dumps({"state": "online", "vin": OTHER_VIN}),
            Reason.VIN_MISMATCH,
            id="vin-mismatch",
        ),
        pytest.param(
            orjson.dumps({"state": "online", "vin": "nope"}), Reason.INVALID_VIN, id="invalid-vin"
        ),
        pytest.param(b" " * 4097, Reason.PAYLOAD_TOO_LARGE, id="too-large"),
    ],
)
def test_status_rejected(payload: bytes, reason: Reason) -> None:
    rejection = decode_status(payload, topic_vin=VIN)
    assert isinstance(rejection, Rejection)
    assert rejection.reason is reason, rejection.detail
    assert rejection.vin == VIN


# --- property: every valid sample survives the round trip -------------------------------------

# explicit alphabet (JSON escapes, non-ASCII, astral plane) for free-form strings
_TEXT = st.sampled_from(list('AZaz09 -_."\\/\n\t\x00\x7féß€日😀'))


def value_strategy(spec: SignalSpec) -> st.SearchStrategy[Any]:
    """Values the catalog accepts for ``spec``."""
    dt = spec.datatype
    if dt is Datatype.BOOLEAN:
        return st.booleans()
    if dt is Datatype.STRING:
        if spec.allowed is not None:
            return st.sampled_from(spec.allowed)
        return st.text(_TEXT, max_size=256)
    if dt is Datatype.STRING_ARRAY:
        return st.lists(st.text(_TEXT, max_size=64), max_size=16)
    if dt.is_integer:
        lo, hi = dt.integer_range
        if spec.min is not None:
            lo = max(lo, math.ceil(spec.min))
        if spec.max is not None:
            hi = min(hi, math.floor(spec.max))
        return st.integers(min_value=lo, max_value=hi)
    assert dt.is_number, dt
    return st.floats(min_value=spec.min, max_value=spec.max, allow_nan=False, allow_infinity=False)


SIGNALS = st.fixed_dictionaries(
    {}, optional={path: value_strategy(spec) for path, spec in CATALOG.items()}
)


def _types(signals: Mapping[str, SignalValue]) -> dict[str, type]:
    return {k: type(v) for k, v in signals.items()}


@settings(max_examples=200, deadline=None)
@given(
    signals=SIGNALS,
    seq=st.integers(min_value=0, max_value=MAX_SEQ),
    ts=st.integers(min_value=DEFAULT_LIMITS.min_plausible_ts_ms, max_value=HORIZON),
)
def test_any_valid_sample_round_trips(signals: dict[str, SignalValue], seq: int, ts: int) -> None:
    sample = Sample(VIN, seq, ts, signals)
    decoded = decode(encode_sample(sample))
    assert decoded.rejections == ()
    assert decoded.samples == (sample,)
    assert _types(decoded.samples[0].signals) == _types(signals)


def test_an_unknown_key_is_named_in_words_a_unit_engineer_can_act_on() -> None:
    """A firmware engineer's unit sent ``"Vehicle.Foo"`` and a field ``"extra"``; its feedback
    notices said ``signals.Vehicle.Foo: Extra inputs are not permitted`` and ``extra: Extra
    inputs are not permitted`` (pydantic's words): neither named the catalog nor the
    contract. Each now says what the key is not and where the accepted ones are listed."""
    from schemas.commands import decode_command_result
    from schemas.payloads import decode_event

    vin, now = "WVWZZZ1JZXW000001", 1_764_230_400_000
    sample = {"vin": vin, "seq": 1, "ts": now, "signals": {"Vehicle.speed": 1.0}}
    (refused,) = decode_telemetry(orjson.dumps(sample), topic_vin=vin, now_ms=now).rejections
    assert refused.reason == "unknown_signal"
    assert "Extra inputs" not in refused.detail
    assert "Vehicle.speed: not a signal of the catalog (GET /v1/catalog" in refused.detail
    batch = {"vin": vin, "samples": [{"seq": 1, "ts": now, "signals": {}, "extra": 1}]}
    (refused,) = decode_telemetry(orjson.dumps(batch), topic_vin=vin, now_ms=now).rejections
    assert refused.reason == "invalid_envelope"
    assert "samples.0.extra: not a field of this message in device contract v1" in refused.detail
    event: dict[str, object] = {"vin": vin, "seq": 1, "ts": now, "type": "ignition_on"}
    event["note"] = "x"
    refused_event = decode_event(orjson.dumps(event), topic_vin=vin, now_ms=now)
    assert "note: not a field of this message" in str(refused_event)
    answer: dict[str, object] = {"command_id": "6f1c3a52-0d4e-4b8a-9c57-2f7e1b9d0a11"}
    answer |= {"vin": vin, "status": "accepted", "ts": now, "extra": 1}
    refused_answer = decode_command_result(orjson.dumps(answer), topic_vin=vin)
    assert "extra: not a field of a command answer" in str(refused_answer)


# --- duplicate names (decision 0065) -------------------------------------------------------


def test_duplicate_names_are_refused_in_every_unit_payload() -> None:
    from schemas.commands import decode_command_result

    event = (
        f'{{"vin": "{VIN}", "seq": 1, "ts": {TS}, "type": "ignition_on", "type": "ignition_off"}}'
    )
    status = b'{"state": "online", "state": "offline"}'
    result = (
        f'{{"command_id": "6f1c0000-0000-4000-8000-000000000001", "vin": "{VIN}", '
        f'"status": "accepted", "status": "succeeded", "ts": {TS}}}'
    )
    refused = [
        decode_event(event.encode(), topic_vin=VIN, now_ms=NOW),
        decode_status(status, topic_vin=VIN),
        decode_command_result(result.encode(), topic_vin=VIN),
    ]
    for rejection in refused:
        assert isinstance(rejection, Rejection)
        assert rejection.reason is Reason.DUPLICATE_KEY
        assert "occurs twice" in rejection.detail


def test_strings_that_look_like_names_are_no_duplicates() -> None:
    """A quote and a colon inside a value make the quick count higher: the exact check then
    decides, and a payload without a duplicate is accepted."""
    sneaky = (
        f'{{"vin": "{VIN}", "seq": 1, "ts": {TS}, "type": "ignition_on", '
        f'"detail": "a\\":b \\"c\\" :"}}'
    )
    event = decode_event(sneaky.encode(), topic_vin=VIN, now_ms=NOW)
    assert isinstance(event, Event), event
    assert event.detail == 'a":b "c" :'


_json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=6)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(st.tuples(st.sampled_from(["a", "b", '"', ":", 'a":']), inner), max_size=4)
    ),
    max_leaves=12,
)


def _render(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return "{" + ", ".join(f"{orjson.dumps(k).decode()} : {_render(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_render(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def _has_duplicate(value: Any) -> bool:
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        names = [k for k, _ in value]
        return len(names) != len(set(names)) or any(_has_duplicate(v) for _, v in value)
    if isinstance(value, list):
        return any(_has_duplicate(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(_json)
def test_the_quick_count_never_misses_a_duplicate(value: Any) -> None:
    """Any JSON text, names with quotes and colons in them included: duplicate_key finds a
    duplicate exactly when there is one, given the count of a last-one-wins parser."""
    from schemas.duplicates import duplicate_key, member_count

    text = _render(value).encode()
    parsed = orjson.loads(text)
    assert (duplicate_key(text, member_count(parsed)) is not None) == _has_duplicate(value)
