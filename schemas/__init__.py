"""The device contract: what an in-car unit and the gateway say to each other over MQTT.

Layout:
    vin.py       VIN validation (ISO 3779 alphabet, 17 characters)
    topics.py    topic names under ``v1/vehicles/{vin}/`` and their parser
    catalog.py   the typed signal catalog (COVESA VSS paths, datatypes, units, bounds)
    payloads.py  payload types and the pure encode/decode functions

Imports: only the standard library, pydantic, orjson and (for command signatures,
``signing.py``) cryptography. Imported by ``gateway`` and
``device_sim`` alike; this package never imports either of them, so the simulator speaks
exactly the public contract a real unit would.
"""

from schemas.catalog import CATALOG, Datatype, SignalSpec
from schemas.payloads import (
    DEFAULT_LIMITS,
    MAX_SEQ,
    DecodedTelemetry,
    Event,
    EventType,
    Limits,
    Reason,
    Rejection,
    Sample,
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
)
from schemas.topics import (
    CONTRACT_VERSION,
    Channel,
    InvalidTopicError,
    ParsedTopic,
    parse_topic,
    subscription_filters,
    topic_for,
)
from schemas.vin import VIN_PATTERN, InvalidVinError, is_valid_vin, validate_vin

__all__ = [
    "CATALOG",
    "CONTRACT_VERSION",
    "DEFAULT_LIMITS",
    "MAX_SEQ",
    "VIN_PATTERN",
    "Channel",
    "Datatype",
    "DecodedTelemetry",
    "Event",
    "EventType",
    "InvalidTopicError",
    "InvalidVinError",
    "Limits",
    "ParsedTopic",
    "Reason",
    "Rejection",
    "Sample",
    "SignalSpec",
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
    "is_valid_vin",
    "parse_topic",
    "subscription_filters",
    "topic_for",
    "validate_vin",
]
