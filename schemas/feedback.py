"""Feedback to a unit: what the gateway refused of its input (device contract v1).

A PUBACK only says that the *broker* took a message; the gateway decodes it later and may
quarantine it (``docs/device-contract.md``, "What a PUBACK means"). So that a unit, and the
engineer debugging it, can learn that without access to the API, the gateway publishes a
short notice for each refused message on the vehicle's own feedback topic::

    v1/vehicles/{vin}/feedback      QoS 0, not retained, published by the gateway

    {"topic": "v1/vehicles/WVWZZZ1JZXW000001/telemetry", "reason": "implausible_timestamp",
     "detail": "ts 0 is before 1577836800000 ...", "seq": 42, "signal": null,
     "received_at": 1764230400123, "suppressed": 0}

``reason`` is a quarantine reason (``schemas.Reason``); ``seq`` and ``signal`` say which
sample and signal when the refusal concerns one; ``suppressed`` counts the notices for this
vehicle that were dropped since the previous one because of the rate bound (the gateway
sends at most :data:`FEEDBACK_BURST` at once and :data:`FEEDBACK_PER_S` a second on
average per vehicle). Notices are advisory: QoS 0 and never queued for an offline unit, so a
unit must not depend on them; the quarantine (``GET /v1/quarantine``) is the record.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from schemas.topics import CONTRACT_VERSION

__all__ = [
    "FEEDBACK_BURST",
    "FEEDBACK_DETAIL_MAX",
    "FEEDBACK_PER_S",
    "Feedback",
    "FeedbackLimiter",
    "decode_feedback",
    "encode_feedback",
    "feedback_topic",
]

#: notices a vehicle may get at once, and on average per second after that
FEEDBACK_BURST = 10
FEEDBACK_PER_S = 1.0
#: the detail is cut to this many characters (the quarantine keeps the whole of it)
FEEDBACK_DETAIL_MAX = 256


def feedback_topic(vin: str) -> str:
    """Where the gateway tells ``vin`` what it refused; the unit may subscribe (QoS 0)."""
    return f"{CONTRACT_VERSION}/vehicles/{vin}/feedback"


@dataclass(frozen=True, slots=True)
class Feedback:
    topic: str
    reason: str
    detail: str
    received_at: int
    seq: int | None = None
    signal: str | None = None
    suppressed: int = 0


def encode_feedback(feedback: Feedback) -> bytes:
    return orjson.dumps(
        {
            "topic": feedback.topic,
            "reason": feedback.reason,
            "detail": feedback.detail[:FEEDBACK_DETAIL_MAX],
            "seq": feedback.seq,
            "signal": feedback.signal,
            "received_at": feedback.received_at,
            "suppressed": feedback.suppressed,
        }
    )


def decode_feedback(payload: bytes) -> Feedback:
    """What a unit does with a notice (raises ValueError for anything else)."""
    try:
        raw = orjson.loads(payload)
        return Feedback(
            topic=str(raw["topic"]),
            reason=str(raw["reason"]),
            detail=str(raw["detail"]),
            received_at=int(raw["received_at"]),
            seq=raw.get("seq"),
            signal=raw.get("signal"),
            suppressed=int(raw.get("suppressed", 0)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a feedback notice: {exc}") from exc


class FeedbackLimiter:
    """The per-vehicle rate bound of the notices (a token bucket per VIN; pure: the caller
    passes the time). A flood of bad input from one unit costs the broker at most
    ``per_s`` small messages a second, and the unit learns how many it missed."""

    def __init__(
        self,
        *,
        burst: int = FEEDBACK_BURST,
        per_s: float = FEEDBACK_PER_S,
        max_vehicles: int = 100_000,
    ) -> None:
        self._burst = float(burst)
        self._per_ms = per_s / 1000.0
        self._max_vehicles = max_vehicles
        #: vin -> (tokens, at, suppressed since the last notice)
        self._buckets: dict[str, tuple[float, int, int]] = {}

    def admit(self, vin: str, now_ms: int) -> int | None:
        """None: drop this notice (counted); else send it, with the number dropped before."""
        tokens, at, suppressed = self._buckets.get(vin, (self._burst, now_ms, 0))
        tokens = min(self._burst, tokens + max(0, now_ms - at) * self._per_ms)
        if tokens < 1.0:
            self._buckets[vin] = (tokens, now_ms, suppressed + 1)
            return None
        if len(self._buckets) >= self._max_vehicles and vin not in self._buckets:
            self._buckets.clear()  # bounded memory; a forgotten vehicle starts with a full bucket
        self._buckets[vin] = (tokens - 1.0, now_ms, 0)
        return suppressed
