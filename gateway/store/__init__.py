"""Telemetry store: where validated samples, vehicle state and the quarantine live.

``base`` holds the interface and its value types; ``sqlite`` the embedded default;
``seqgaps`` the pure arithmetic of missing seq numbers that ``sqlite`` keeps per vehicle.
Imports ``schemas`` and ``gateway.errors``; imported by ``gateway.ingest`` and ``gateway.api``.
"""

from gateway.store.base import (
    FIRST_TENURE,
    CommitResult,
    HistoryPoint,
    IngestBatch,
    QuarantineEntry,
    StatusChange,
    StoredQuarantine,
    TelemetryReader,
    TelemetryStore,
    Tenure,
    VehicleState,
    VehicleSummary,
    presence,
)
from gateway.store.sqlite import SqliteTelemetryStore

__all__ = [
    "FIRST_TENURE",
    "CommitResult",
    "HistoryPoint",
    "IngestBatch",
    "QuarantineEntry",
    "SqliteTelemetryStore",
    "StatusChange",
    "StoredQuarantine",
    "TelemetryReader",
    "TelemetryStore",
    "Tenure",
    "VehicleState",
    "VehicleSummary",
    "presence",
]
