"""Telemetry store: where validated samples, vehicle state and the quarantine live.

:func:`open_store` (``factory``) is the one way to a store, by URL; ``base`` holds the
interface and its value types; ``sqlite`` the embedded default; ``seqgaps`` the pure
arithmetic of missing seq numbers that ``sqlite`` keeps per vehicle. The SQLite class is
not exported here: code outside the store reaches a store only through ``open_store``.
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
    TelemetryBackend,
    TelemetryReader,
    TelemetryStore,
    Tenure,
    VehicleState,
    VehicleSummary,
    presence,
)
from gateway.store.factory import SUPPORTED_SCHEMES, open_store, resolve_store, store_path

__all__ = [
    "FIRST_TENURE",
    "SUPPORTED_SCHEMES",
    "CommitResult",
    "HistoryPoint",
    "IngestBatch",
    "QuarantineEntry",
    "StatusChange",
    "StoredQuarantine",
    "TelemetryBackend",
    "TelemetryReader",
    "TelemetryStore",
    "Tenure",
    "VehicleState",
    "VehicleSummary",
    "open_store",
    "presence",
    "resolve_store",
    "store_path",
]
