"""MQTT topic names of the device contract (version 1).

Every topic sits under ``v1/vehicles/{vin}/``:

=============================  ====  =========  ==========================================
topic                          QoS   retained   who publishes
=============================  ====  =========  ==========================================
``v1/vehicles/{vin}/telemetry``  1     no         the unit: one sample or a batch of samples
``v1/vehicles/{vin}/events``     1     no         the unit: fault codes set/cleared, ignition
``v1/vehicles/{vin}/status``     1     yes        the unit (``online``) and its Last Will
                                                  (``offline``)
=============================  ====  =========  ==========================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from schemas.vin import is_valid_vin

__all__ = [
    "CONTRACT_VERSION",
    "Channel",
    "InvalidTopicError",
    "ParsedTopic",
    "parse_topic",
    "subscription_filters",
    "topic_for",
]

CONTRACT_VERSION = "v1"
_PREFIX = f"{CONTRACT_VERSION}/vehicles/"


class Channel(enum.StrEnum):
    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATUS = "status"


class InvalidTopicError(ValueError):
    """Raised by :func:`parse_topic` for a topic outside the device contract."""

    def __init__(self, topic: str, why: str) -> None:
        self.topic = topic
        self.why = why
        super().__init__(f"topic {topic!r} is not part of the device contract: {why}")


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    vin: str
    channel: Channel


def topic_for(vin: str, channel: Channel) -> str:
    return f"{_PREFIX}{vin}/{channel.value}"


def parse_topic(topic: str) -> ParsedTopic:
    """Split ``v1/vehicles/{vin}/{channel}``; raise :class:`InvalidTopicError` otherwise."""
    if not topic.startswith(_PREFIX):
        raise InvalidTopicError(topic, f"it does not start with {_PREFIX!r}")
    parts = topic[len(_PREFIX) :].split("/")
    if len(parts) != 2:
        raise InvalidTopicError(topic, "expected v1/vehicles/{vin}/{channel}")
    vin, channel = parts
    if not is_valid_vin(vin):
        raise InvalidTopicError(topic, f"{vin!r} is not a valid VIN")
    try:
        return ParsedTopic(vin, Channel(channel))
    except ValueError:
        known = ", ".join(c.value for c in Channel)
        raise InvalidTopicError(topic, f"unknown channel {channel!r} (known: {known})") from None


def subscription_filters() -> list[str]:
    """Topic filters the gateway subscribes to (before the shared-subscription prefix)."""
    return [f"{_PREFIX}+/{channel.value}" for channel in Channel]
