"""Telemetry store: where validated samples, vehicle state and the quarantine live.

:func:`open_store` (``factory``) is the one way to a store, by URL; ``base`` holds the
interface and its value types; ``sqlite`` the embedded default (the pure rules it
applies, such as ``gateway.core.seqgaps``, live in the core). The SQLite class is
not exported here: code outside the store reaches a store only through ``open_store``.
Imports ``schemas`` and ``gateway.errors``; imported by ``gateway.ingest`` and ``gateway.api``.
"""

from gateway.store.base import (
    FIRST_TENURE,
    HISTORY_SCAN_ROWS,
    CommitResult,
    HistoryPage,
    HistoryPoint,
    IngestBatch,
    LoggedEvent,
    LoggedSample,
    MapState,
    QuarantineEntry,
    StatusChange,
    StoredQuarantine,
    TelemetryBackend,
    TelemetryReader,
    TelemetryStore,
    Tenure,
    VehicleState,
    VehicleSummary,
)
from gateway.store.factory import SUPPORTED_SCHEMES, open_store, resolve_store, store_path

__all__ = [
    "FIRST_TENURE",
    "HISTORY_SCAN_ROWS",
    "SUPPORTED_SCHEMES",
    "CommitResult",
    "HistoryPage",
    "HistoryPoint",
    "IngestBatch",
    "LoggedEvent",
    "LoggedSample",
    "MapState",
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
    "resolve_store",
    "store_path",
]
