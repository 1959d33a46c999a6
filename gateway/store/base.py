"""The telemetry store's interface and the values that cross it.

The ingest pipeline hands the store one :class:`IngestBatch` per commit: samples, events,
status changes, quarantined input and counter deltas, all from messages that have not been
acknowledged to the broker yet. :meth:`TelemetryStore.commit` makes all of it durable in one
transaction; only then does the pipeline acknowledge those messages. A crash before the
commit means the broker redelivers them, and (vin, seq) deduplication makes the second
delivery harmless.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas import Event, Rejection, Sample, SignalValue, StatusState

__all__ = [
    "OFFLINE_BY_STATUS",
    "OFFLINE_SILENT",
    "CommitResult",
    "HistoryPoint",
    "IngestBatch",
    "QuarantineEntry",
    "StatusChange",
    "StoredQuarantine",
    "TelemetryReader",
    "TelemetryStore",
    "VehicleState",
    "VehicleSummary",
    "presence",
]


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """Something the gateway refused, kept with its reason, topic and raw payload."""

    received_at: int
    topic: str
    payload: bytes
    rejection: Rejection


@dataclass(frozen=True, slots=True)
class StatusChange:
    vin: str
    state: StatusState
    at: int
    #: delivered by the broker from its retained store when the gateway (re)subscribed, not
    #: sent just now: it tells the vehicle's state, not when it changed or was last heard
    retained: bool = False


@dataclass(frozen=True, slots=True)
class IngestBatch:
    received_at: int
    samples: Sequence[Sample] = ()
    events: Sequence[Event] = ()
    statuses: Sequence[StatusChange] = ()
    quarantine: Sequence[QuarantineEntry] = ()
    #: vin -> receive time of its newest message in this batch
    seen: Mapping[str, int] = field(default_factory=dict)
    #: (counter name, label) -> increment, persisted with the data (see gateway.metrics)
    counters: Mapping[tuple[str, str], float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommitResult:
    samples_stored: int
    sample_duplicates: int
    events_stored: int
    event_duplicates: int
    quarantined: int


@dataclass(frozen=True, slots=True)
class VehicleSummary:
    vin: str
    online: bool | None
    first_seen: int
    last_seen: int
    status_changed_at: int | None
    #: telemetry (event) seq numbers between the first and the last received that have not
    #: arrived (``gateway.store.seqgaps``); a late upload that brings them lowers it again
    missing_samples: int = 0
    missing_events: int = 0


#: ``offline_reason`` values: the last status message (the unit's, or its Last Will) said
#: offline; or it says online but nothing has come from the vehicle for too long
OFFLINE_BY_STATUS = "status"
OFFLINE_SILENT = "silent"


def presence(
    summary: VehicleSummary, *, now_ms: int, silent_after_ms: int
) -> tuple[bool | None, str | None]:
    """(online, offline_reason) as the API shows it. Pure.

    The last status message decides, except that a vehicle whose status says online but
    from which no message at all (telemetry, event, status) has come for more than
    ``silent_after_ms`` is shown offline with reason ``silent``: a unit that disconnects
    normally without publishing ``offline`` (Mosquitto sends no Last Will then) or hangs
    would otherwise stay online forever. The contract makes every unit publish something at
    least every 5 minutes (``docs/device-contract.md``), so silence means it is gone.
    ``None``: it never sent a status.
    """
    if summary.online is None:
        return None, None
    if not summary.online:
        return False, OFFLINE_BY_STATUS
    if now_ms - summary.last_seen > silent_after_ms:
        return False, OFFLINE_SILENT
    return True, None


@dataclass(frozen=True, slots=True)
class VehicleState:
    summary: VehicleSummary
    #: signal path -> (value, ts of the sample it came from)
    latest: Mapping[str, tuple[SignalValue, int]]


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    seq: int
    ts: int
    values: Mapping[str, SignalValue]


@dataclass(frozen=True, slots=True)
class StoredQuarantine:
    id: int
    received_at: int
    topic: str
    reason: str
    detail: str
    vin: str | None
    seq: int | None
    signal: str | None
    #: the payload as kept: all of it, or its first bytes when it was larger than the
    #: store's quarantine payload limit
    payload: bytes
    #: length and SHA-256 (hex) of the whole payload as received
    payload_size: int
    payload_sha256: str


class TelemetryStore(Protocol):
    """Where ingest writes. One instance per gateway process; not thread-safe."""

    def commit(self, batch: IngestBatch) -> CommitResult: ...

    def close(self) -> None: ...


class TelemetryReader(Protocol):
    """What the HTTP API reads. Safe to use from several processes at once."""

    def list_vehicles(
        self, *, limit: int, after: str | None = None, vins: Collection[str] | None = None
    ) -> list[VehicleSummary]:
        """Ordered by VIN, those after ``after``; ``vins``: only these (what the caller may
        see), None: all."""
        ...

    def vehicle_state(self, vin: str) -> VehicleState | None: ...

    def history(
        self,
        vin: str,
        signals: Sequence[str],
        *,
        start: int,
        end: int,
        limit: int,
        after: tuple[int, int] | None = None,
    ) -> list[HistoryPoint]:
        """Oldest first; ``after``: only points after this (ts, seq)."""
        ...

    def quarantine(
        self,
        *,
        limit: int,
        reason: str | None = None,
        vin: str | None = None,
        before_id: int | None = None,
    ) -> list[StoredQuarantine]: ...

    def counters(self) -> dict[tuple[str, str], float]: ...

    def vehicle_counts(
        self, vins: Collection[str] | None = None, *, heard_since: int | None = None
    ) -> tuple[int, int]:
        """(vehicles known, vehicles whose last status is online); ``vins``: only these;
        ``heard_since``: online ones only if heard from at or after it (see presence)."""
        ...

    def close(self) -> None: ...
