"""Names of the ingest counters, shared by the writer (ingest) and the reader (API).

Counters are persisted in the telemetry store in the same transaction as the data they
count, so they survive restarts, add up across several gateway processes, and never
disagree with what was stored. The API's ``/metrics`` renders them for Prometheus.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COMMIT_SECONDS",
    "COMMIT_SECONDS_BUCKETS",
    "EVENTS_DUPLICATE",
    "EVENTS_STORED",
    "GATEWAY_MESSAGES",
    "MESSAGES_RECEIVED",
    "QUARANTINED",
    "SAMPLES_DUPLICATE",
    "SAMPLES_STORED",
    "SEQ_GAPS",
    "SEQ_MISSING",
    "SPOOL_LIMIT",
    "SPOOL_SAMPLES",
    "STREAM_EVENTS",
    "STREAM_TELEMETRY",
    "commit_seconds_counters",
]

#: label: the channel (telemetry, events, status, or "invalid" for an unknown topic)
MESSAGES_RECEIVED: Final = "telematics_messages_received_total"
#: label: the gateway's MQTT client id, so the split between scaled-out processes shows
GATEWAY_MESSAGES: Final = "telematics_gateway_messages_received_total"
SAMPLES_STORED: Final = "telematics_samples_stored_total"
#: samples that were already stored (a redelivery after a crash, or a unit resending)
SAMPLES_DUPLICATE: Final = "telematics_samples_duplicate_total"
EVENTS_STORED: Final = "telematics_events_stored_total"
EVENTS_DUPLICATE: Final = "telematics_events_duplicate_total"
#: label: the reason code (schemas.Reason)
QUARANTINED: Final = "telematics_quarantined_total"
#: label: the stream (telemetry, events). Seq numbers found missing (a later number arrived
#: first), cumulative: what was lost or late, ever. Never decreases.
SEQ_GAPS: Final = "telematics_seq_gaps_total"
#: label: the stream. Seq numbers missing now, over every vehicle: detected minus those a
#: late upload brought after all (a gauge kept as deltas in the counters table)
SEQ_MISSING: Final = "telematics_seq_missing"
#: gauges the InfluxDB store reports with its counters (not persisted): samples committed
#: locally and not yet in InfluxDB, and the bound at which commits are refused
SPOOL_SAMPLES: Final = "telematics_store_spool_samples"
SPOOL_LIMIT: Final = "telematics_store_spool_limit_samples"
STREAM_TELEMETRY: Final = "telemetry"
STREAM_EVENTS: Final = "events"
#: histogram of batch commit latency; labels are the bucket bounds, plus "sum" and "count"
COMMIT_SECONDS: Final = "telematics_batch_commit_seconds"
COMMIT_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def commit_seconds_counters(seconds: float) -> dict[tuple[str, str], float]:
    """Counter increments that record one commit of ``seconds`` in the histogram."""
    out = {(COMMIT_SECONDS, "sum"): seconds, (COMMIT_SECONDS, "count"): 1.0}
    for bound in COMMIT_SECONDS_BUCKETS:
        if seconds <= bound:
            out[(COMMIT_SECONDS, repr(bound))] = 1.0
    return out
