"""The telemetry store's interface and the values that cross it.

The ingest pipeline hands the store one :class:`IngestBatch` per commit: samples, events,
status changes, quarantined input and counter deltas, all from messages that have not been
acknowledged to the broker yet. :meth:`TelemetryStore.commit` makes all of it durable in one
transaction; only then does the pipeline acknowledge those messages. A crash before the
commit means the broker redelivers them, and (vin, tenure, seq) deduplication makes the
second delivery harmless.

**Tenures.** A VIN can change hands: revoked by one account, provisioned by another. What a
vehicle reports belongs to the account that held the VIN when it was recorded, so
everything stored for a vehicle is keyed by (VIN, tenure), the tenure being the number of
the VIN's holding period in the state database (1 for its first holder, 2 for the next,
...; ``gateway.statedb``, docs/decisions/0009-vehicle-ownership-periods.md). The gateway
gives each batch the current :class:`Tenure` of every VIN in it (:attr:`IngestBatch.tenures`)
and the store files each sample and event by its own time: at or after the tenure's start,
in that tenure; before it (an earlier holder's unit, its messages delivered late), in the
one before. A reader asks for one (VIN, tenure). A gateway that does not read the state
database stamps :data:`FIRST_TENURE`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from gateway.core.batching import (
    FIRST_TENURE,
    IngestBatch,
    QuarantineEntry,
    StatusChange,
    Tenure,
)
from schemas import SignalValue

__all__ = [
    "FIRST_TENURE",
    "CommitResult",
    "HistoryPoint",
    "IngestBatch",
    "LoggedEvent",
    "LoggedSample",
    "MapState",
    "QuarantineEntry",
    "StatusChange",
    "StoredQuarantine",
    "TelemetryReader",
    "TelemetryStore",
    "Tenure",
    "VehicleState",
    "VehicleSummary",
]


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
    #: arrived (``gateway.core.seqgaps``); a late upload that brings them lowers it again
    missing_samples: int = 0
    missing_events: int = 0


@dataclass(frozen=True, slots=True)
class VehicleState:
    summary: VehicleSummary
    #: signal path -> (value, ts of the sample it came from)
    latest: Mapping[str, tuple[SignalValue, int]]


@dataclass(frozen=True, slots=True)
class MapState:
    """A vehicle as the live map first draws it: its holding period, status and the newest
    value (with its sample time) of each map signal it has."""

    vin: str
    tenure: int
    online: bool | None
    last_seen: int
    latest: Mapping[str, tuple[SignalValue, int]]


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    seq: int
    ts: int
    values: Mapping[str, SignalValue]


#: the most stored samples one history read looks at (security review 5, "left": a signal
#: the vehicle rarely sends made each request scan all its samples in the window, 0.12-0.19
#: s of CPU at 1,000,000 samples); beyond, the page ends early with :attr:`HistoryPage.resume`
HISTORY_SCAN_ROWS: Final = 20_000


class HistoryPage(list[HistoryPoint]):
    """The points of one history read, oldest first. ``resume``: the (ts, seq) of the last
    sample looked at when the read stopped at its scan bound before ``limit`` points (the
    points after it are not read yet: pass it as ``after``); None when the read reached
    ``limit`` points or the end of the window."""

    def __init__(
        self, points: Iterable[HistoryPoint] = (), resume: tuple[int, int] | None = None
    ) -> None:
        super().__init__(points)
        self.resume = resume


@dataclass(frozen=True, slots=True)
class LoggedSample:
    """A committed sample as the log gives it: its row ``id`` (the cursor: ids grow in
    commit order), the vehicle's (vin, tenure), seq, the unit's ``ts`` and the gateway's
    ``received_at``."""

    id: int
    vin: str
    tenure: int
    seq: int
    ts: int
    received_at: int
    values: Mapping[str, SignalValue]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A committed event as the log gives it (``type`` as in ``schemas.EventType``)."""

    id: int
    vin: str
    tenure: int
    seq: int
    ts: int
    received_at: int
    type: str
    code: str | None
    detail: str | None


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
    #: the holding period of the vehicle it concerns, when the gateway knew it
    tenure: int | None = None


class TelemetryStore(Protocol):
    """Where ingest writes. One instance per gateway process; not thread-safe."""

    def commit(self, batch: IngestBatch) -> CommitResult: ...

    def close(self) -> None: ...


class TelemetryReader(Protocol):
    """What the HTTP API reads. Safe to use from several processes at once.

    A vehicle is always read at one tenure (see the module docstring): its state, history
    and summary from before or after that holding period are not there."""

    def list_vehicles(
        self, *, limit: int, after: str | None = None, vins: Mapping[str, int] | None = None
    ) -> list[VehicleSummary]:
        """Ordered by VIN, those after ``after``; ``vins``: only these, each at its tenure
        (vin -> tenure: what the caller may see); None: every VIN, each at the newest
        tenure stored for it."""
        ...

    def vehicle_state(self, vin: str, *, tenure: int) -> VehicleState | None: ...

    def map_states(
        self, signals: Sequence[str], *, limit: int, vins: Mapping[str, int] | None = None
    ) -> list[MapState]:
        """Ordered by VIN, at most ``limit`` vehicles, each with its newest value of
        ``signals``: in one read whatever the number of vehicles (the live map's first
        snapshot of a fleet). ``vins`` as for :meth:`list_vehicles`."""
        ...

    def history(
        self,
        vin: str,
        signals: Sequence[str],
        *,
        tenure: int,
        start: int,
        end: int,
        limit: int,
        after: tuple[int, int] | None = None,
        scan: int = HISTORY_SCAN_ROWS,
    ) -> HistoryPage:
        """Oldest first; ``after``: only points after this (ts, seq). Looks at no more
        than about ``scan`` stored samples: a page may end early, with ``resume``."""
        ...

    def quarantine(
        self,
        *,
        limit: int,
        reason: str | None = None,
        vin: str | None = None,
        before_id: int | None = None,
        vins: Mapping[str, int] | None = None,
    ) -> list[StoredQuarantine]:
        """Newest first; ``vins``: only entries about these vehicles in these holding
        periods (vin -> tenure: what the caller may see; entries of no known period are
        left out); None: all."""
        ...

    def counters(self) -> dict[tuple[str, str], float]: ...

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        """The committed samples with row id above ``cursor``, by id (commit order), at
        most ``limit``. A row committed after this call never has an id at or below the
        last one returned, so the last id is the next call's cursor."""
        ...

    def events_after(
        self, cursor: int, *, limit: int, vin: str | None = None, tenure: int | None = None
    ) -> list[LoggedEvent]:
        """The committed events with row id above ``cursor``, by id, at most ``limit``;
        ``vin`` and ``tenure``: only that vehicle's (what the API reads)."""
        ...

    def vehicle_samples(
        self, vin: str, *, tenure: int, start: int, end: int, limit: int
    ) -> list[LoggedSample]:
        """All the signals of the vehicle's samples with ``start <= ts < end``, by (ts,
        seq), at most ``limit`` (a trip recompute reads its window this way)."""
        ...

    def vehicle_counts(
        self, vins: Mapping[str, int] | None = None, *, heard_since: int | None = None
    ) -> tuple[int, int]:
        """(vehicles known, vehicles whose last status is online); ``vins``: only these, at
        their tenures (None: every VIN at its newest tenure); ``heard_since``: online ones
        only if heard from at or after it (see presence)."""
        ...

    def close(self) -> None: ...


class TelemetryBackend(TelemetryStore, TelemetryReader, Protocol):
    """What :func:`gateway.store.open_store` returns: a store that ingest writes, the API
    reads and retention prunes (``tests/test_store_contract.py`` is its contract, run by
    every backend)."""

    def prune_samples(self, *, received_before: int, chunk: int = 2000) -> int:
        """Delete up to ``chunk`` samples received before ``received_before``, oldest
        first; the number deleted."""
        ...

    def prune_seq_gaps(self, *, chunk: int = 2000) -> int:
        """Delete up to ``chunk`` telemetry seq-gap rows below every sample still stored for
        their vehicle (they go with the retention of the samples they describe); the number
        deleted."""
        ...

    def prune_quarantine(
        self, *, received_before: int | None, max_entries: int | None, chunk: int = 2000
    ) -> int:
        """Delete up to ``chunk`` quarantine entries, oldest first: those received before
        ``received_before`` and those beyond the newest ``max_entries``."""
        ...

    def close(self) -> None: ...
