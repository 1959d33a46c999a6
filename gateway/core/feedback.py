"""Notices to units of what the gateway refused (``schemas.feedback``), built from the
quarantine entries of a committed batch.

Pure: quarantine entries and the time in, (topic, payload) pairs out; the ingest service and
the command service publish them (QoS 0) after the commit, so a notice never announces a
refusal that a failed commit then forgot. Entries without a vehicle (an unparseable topic)
and those of unprovisioned vehicles (nobody may read their topics) get no notice.
In the core because both adapters use it (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.batching import QuarantineEntry
from schemas import Reason
from schemas.edges import routed_topic
from schemas.feedback import Feedback, FeedbackLimiter, encode_feedback, feedback_topic

__all__ = ["feedback_messages"]

_NO_NOTICE = frozenset({Reason.UNPROVISIONED_VEHICLE, Reason.INVALID_TOPIC})


def feedback_messages(
    entries: Iterable[QuarantineEntry], limiter: FeedbackLimiter, now_ms: int, edges: int = 0
) -> list[tuple[str, bytes]]:
    """One notice per refused message, sample or signal, within the per-vehicle bound;
    ``edges``: the installation's edge brokers, each notice's topic routed to its VIN's
    edge (:func:`schemas.edges.routed_topic`)."""
    out: list[tuple[str, bytes]] = []
    for entry in entries:
        rejection = entry.rejection
        vin = rejection.vin
        if vin is None or rejection.reason in _NO_NOTICE:
            continue
        suppressed = limiter.admit(vin, now_ms)
        if suppressed is None:
            continue
        notice = Feedback(
            topic=entry.topic,
            reason=rejection.reason.value,
            detail=rejection.detail,
            received_at=entry.received_at,
            seq=rejection.seq,
            signal=rejection.signal,
            suppressed=suppressed,
        )
        out.append((routed_topic(feedback_topic(vin), vin, edges), encode_feedback(notice)))
    return out
