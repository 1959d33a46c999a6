"""The device contract: what an in-car unit and the gateway say to each other over MQTT.

Layout:
    vin.py       VIN validation (ISO 3779 alphabet, 17 characters)
    topics.py    topic names under ``v1/vehicles/{vin}/`` and their parser
    catalog.py   the typed signal catalog (COVESA VSS paths, datatypes, units, bounds)
    payloads.py  payload types and the pure encode/decode functions
    commands.py  remote commands: types, parameters, the unit's rule book, answers
    signing.py   the Ed25519 signature of a command (what is signed, exactly)
    feedback.py  notices to a unit of what the gateway refused of its input
    broker_url.py  the broker URL (mqtt://, mqtts://) units and the gateway connect to
    credentials.py the unit credentials file provisioning hands a fleet of units

The normative text for firmware teams is ``docs/device-contract.md``.

Imports: only the standard library, pydantic, orjson and (for command signatures,
``signing.py``) cryptography. Imported by ``gateway`` and
``device_sim`` alike; this package never imports either of them, so the simulator speaks
exactly the public contract a real unit would.
"""

from schemas.catalog import CATALOG, Datatype, SignalSpec
from schemas.payloads import (
    DEFAULT_LIMITS,
    MAX_SEQ,
    REJECTIONS_LISTED_PER_MESSAGE,
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
    "REJECTIONS_LISTED_PER_MESSAGE",
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
