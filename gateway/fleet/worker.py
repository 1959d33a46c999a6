"""The fleet rules and trips worker: the pure core run over the committed telemetry log.

Why from the log and not from MQTT: with several gateway processes Mosquitto deals one
vehicle's messages round-robin, so no process sees a vehicle's samples in order; the
committed log holds them all, whoever committed them (decision 0014, "Per-vehicle order").

One :meth:`RulesWorker.step`:

1. take or renew leases on partitions (``crc32(VIN) mod P``, rows in the state database):
   a partition is one worker's at a time; a dead worker's partitions are taken over when
   its lease expires;
2. read the samples and events committed after the lowest cursor held (store row ids, in
   commit order), up to ``batch`` of each, and keep the longest prefix whose every row is
   *ready*: in the run of seqs from the vehicle's next seq (known from what was evaluated
   before) that the prefix holds (a hole counts as a gap once the row after it is older
   than ``settle_ms``), or older than it (a late upload), or received at least
   ``settle_ms`` ago. So in-order data is evaluated at once; only a missing seq makes the
   step wait (at most ``settle_ms``, the reorder window): two gateway processes commit a
   vehicle's consecutive samples within milliseconds of each other, so the wait lets the
   later-committed earlier sample arrive before either is evaluated; real loss becomes a
   gap. A vehicle seen for the first time (no next seq known) waits the window once; one
   that is not provisioned never waits (its rows only move the cursor);
3. per partition, per vehicle (VIN and holding period): its samples in seq order, merged
   with its events by time, then a clock :class:`~gateway.core.fleet.signals.Tick` (every
   ``tick_ms``, for every vehicle with a state in the partition: "offline", seq-gap grace),
   through ``evaluate`` (alerts) and ``feed`` (trips); a sample older than the trip
   detector's newest (store-and-forward) makes it recompute the trips from the window's
   start over the stored samples and replace them;
4. store every partition's alert changes, trips and new cursor in one transaction for the
   whole pass, refused if a lease was lost meanwhile (``gateway.statedb.fleet_log``):
   effects exactly once.

The vehicles' states are written behind (decision 0050): kept in memory for the partitions
held and written every ``flush_ms``, each partition on its own schedule, a share of them
per pass (decision 0057), with the pass's effects and cursor (so the stored states are as
of a cursor), at once after a trip recompute and after a change of the
settings, and at :meth:`RulesWorker.stop`. A pass that does not write them notes its new
cursor, its tick's time and the vehicles it skipped (``fleet_passes``); a worker that takes
a partition (or holds it again after a lapse) replays the noted passes over the stored
states, their effects thrown away (they were committed), before its first pass: the states
come out as the lost memory held them, so nothing is raised twice or lost.

Samples of vehicles that are not provisioned (no account) move the cursor and nothing else.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from gateway.core.clock import wall_clock_ms
from gateway.core.fleet.geo import Point
from gateway.core.fleet.rules import AlertChange, RuleSettings, RuleState, evaluate_many
from gateway.core.fleet.signals import Sample, Tick, VehicleEvent
from gateway.core.fleet.state import (
    rule_state_from_json,
    rule_state_to_json,
    trip_state_from_json,
    trip_state_to_json,
)
from gateway.core.fleet.trips import (
    Trip,
    TripSettings,
    TripState,
    feed_many,
    recompute,
    window_start,
)
from gateway.fleet.config import ConfigCache
from gateway.fleet.partitions import DEFAULT_PARTITIONS, partition_of
from gateway.statedb.fleet_log import (
    AlertWrite,
    FleetLog,
    LeaseLost,
    PartitionStep,
    PassNote,
    StateWrite,
    TripRecord,
    TripWrite,
    VinStep,
)
from gateway.statedb.fleets import FleetRepository
from gateway.store import LoggedEvent, LoggedSample, TelemetryReader
from schemas.payloads import EventType

__all__ = ["RulesWorker", "WorkerSettings", "WorkerThread"]

logger = logging.getLogger(__name__)

VinKey = tuple[str, int]
#: a vehicle's rule and trip state, and the rule state last written with its JSON (None:
#: none): the parts it shares with the new one are not built again (``rule_state_to_json``)
VinState = tuple[RuleState, TripState, tuple[RuleState, dict[str, Any]] | None]
LogItem = LoggedSample | LoggedEvent
#: the worker thread's rest after each step, as a multiple of the step's duration
REST_PER_STEP = 1.0
#: the most samples one trip recompute reads (a window starts at a trip's start: hours)
_RECOMPUTE_LIMIT = 500_000
_FOREVER = 2**62
#: the most holding periods whose account the worker keeps (then it starts over)
_ACCOUNTS_KEPT = 200_000


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    partitions: int = DEFAULT_PARTITIONS
    #: the reorder window (see the module docstring)
    settle_ms: int = 2_000
    #: how often "offline" and seq-gap grace are looked at
    tick_ms: int = 30_000
    lease_ms: int = 15_000
    batch: int = 5_000
    #: the thread's pause between steps that found nothing
    poll_s: float = 0.1
    #: how often the vehicles' states are written (0: in every pass); between two writes
    #: they are in memory and a successor replays the passes since (decision 0050)
    flush_ms: int = 5_000
    owner: str = field(default_factory=lambda: f"worker-{uuid.uuid4().hex[:12]}")


@dataclass(slots=True)
class _Read:
    """What one step read: the kept prefix of each log, where it ends, the accounts of the
    vehicles read, and the rows by partition (computed once, not once per partition)."""

    samples: list[LoggedSample]
    events: list[LoggedEvent]
    sample_end: int
    event_end: int
    accounts: dict[VinKey, int] = field(default_factory=dict)
    parts: dict[int, tuple[list[LoggedSample], list[LoggedEvent]]] = field(default_factory=dict)

    def split(self, count: int) -> None:
        for sample in self.samples:
            self.parts.setdefault(partition_of(sample.vin, count), ([], []))[0].append(sample)
        for event in self.events:
            self.parts.setdefault(partition_of(event.vin, count), ([], []))[1].append(event)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A partition's step and the rows it evaluated per vehicle (for the next seqs)."""

    step: PartitionStep
    evaluated: dict[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]]
    #: the vehicles' states after the step (and those read from the database for it)
    states: dict[VinKey, VinState]
    #: what a replay needs of the pass if its states are not written now
    note: PassNote


class _Row(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def vin(self) -> str: ...


RowT = TypeVar("RowT", bound=_Row)


class _LogBuffer(Generic[RowT]):
    """The rows of one log (samples or events) a step read and did not evaluate. A step
    whose rows are not ready yet (a vehicle's first rows, a missing seq: the reorder
    window) returns them to the log; without this the next steps, ten a second while it
    waits, read and decoded the same thousands of rows again (decision 0037). Committed
    rows never change and their ids grow in commit order (module docstring), so the rows
    after a cursor are the held ones after it, then what the store has after the last."""

    def __init__(self) -> None:
        #: the cursor the rows were read after, and the rows: all of the log in
        #: (``start``, last row's id] when they were read
        self._start: int | None = None
        self._rows: list[RowT] = []

    def after(self, cursor: int, limit: int, read: Callable[..., list[RowT]]) -> list[RowT]:
        """What ``read(cursor, limit=limit)`` answers, reading only past the rows held."""
        rows, kept = self._rows, []
        if self._start is not None and self._start <= cursor and rows and cursor < rows[-1].id:
            kept = rows[bisect.bisect_right(rows, cursor, key=_row_id) :]
        if kept:
            more = read(kept[-1].id, limit=limit - len(kept)) if len(kept) < limit else []
            rows = kept + more
        else:
            rows = read(cursor, limit=limit)
        self._start, self._rows = cursor, rows
        return rows


def _row_id(row: _Row) -> int:
    return row.id


#: passes of :func:`_ready_prefix` before it falls back to the settled rows only
_MAX_PASSES = 16


def _reach(start: int | None, seqs: Mapping[int, bool]) -> int | None:
    """One past the seqs of a vehicle that may go now: from ``start`` (its next seq; None:
    not known, then from its lowest seq read once that row has settled) on, each present
    seq, and over a missing one when the row right after the hole has settled (the
    missing one had its window: it is a gap). ``seqs``: seq -> its row has settled."""
    ordered = sorted(seqs)
    if start is None:
        if not ordered or not seqs[ordered[0]]:
            return None
        start = ordered[0]
    c = start
    for seq in ordered:
        if seq < c:
            continue
        if seq == c or seqs[seq]:
            c = seq + 1
        else:
            break
    return c


def _below(seq: int, reach: int | None) -> bool:
    return reach is not None and seq < reach


def _ready_prefix(
    rows: Sequence[Any],
    cursor: int,
    ready_before: int,
    next_seq: Mapping[VinKey, int],
    free: Callable[[VinKey], bool],
) -> tuple[list[Any], int]:
    """The longest prefix of ``rows`` (by id) whose every row is ready (module docstring,
    step 2), and the last id kept. A row is ready when received at or before
    ``ready_before`` (settled), or its vehicle is ``free`` (not provisioned), or its seq is
    below :func:`_reach` of its vehicle's rows in the prefix. A row may be ready because of
    a row further on (two gateways: seq 5 committed before seq 4), so a cut is checked
    again over the shorter prefix until it holds."""
    cut = len(rows)
    for _ in range(_MAX_PASSES):
        limit = cut
        present: dict[VinKey, dict[int, bool]] = defaultdict(dict)
        for row in rows[:limit]:
            present[(row.vin, row.tenure)][row.seq] = row.received_at <= ready_before
        reach = {key: _reach(next_seq.get(key), seqs) for key, seqs in present.items()}
        cut = next(
            (
                i
                for i, row in enumerate(rows[:limit])
                if row.received_at > ready_before
                and not free((row.vin, row.tenure))
                and not _below(row.seq, reach[(row.vin, row.tenure)])
            ),
            limit,
        )
        if cut == limit:
            break
    else:  # pathological interleaving: the settled rows are always a valid prefix
        cut = next((i for i, r in enumerate(rows) if r.received_at > ready_before), len(rows))
    kept = list(rows[:cut])
    return kept, kept[-1].id if kept else cursor


def _core_samples(samples: Sequence[LoggedSample]) -> list[Sample]:
    """One vehicle's samples by seq, as the core's (often one: the usual live pass)."""
    if len(samples) == 1:
        s = samples[0]
        return [Sample(s.ts, s.values, s.seq, s.received_at)]
    return [Sample(s.ts, s.values, s.seq, s.received_at) for s in sorted(samples, key=_seq)]


def _core_items(ss: Sequence[Sample], events: Sequence[LoggedEvent]) -> list[Sample | VehicleEvent]:
    """One vehicle's samples (:func:`_core_samples`) merged with its events (by seq) by
    time."""
    es: list[Sample | VehicleEvent] = [
        VehicleEvent(e.ts, EventType(e.type), e.code, e.received_at)
        for e in sorted(events, key=_seq)
    ]
    return list(heapq.merge(ss, es, key=_ts))


def _seq(row: LogItem) -> int:
    return row.seq


def _ts(item: Sample | VehicleEvent) -> int:
    return item.ts_ms


def _alert_write(c: AlertChange) -> AlertWrite:
    a = c.alert
    return AlertWrite(
        c.action, a.kind.value, a.key, a.severity.value, a.start_ms, a.end_ms, a.detail
    )


def _place(p: Point | None) -> tuple[float, float] | None:
    return None if p is None else (p.lon, p.lat)


def _trip_write(t: Trip) -> TripWrite:
    return TripWrite(
        t.start_ms,
        t.end_ms,
        _place(t.start_place),
        _place(t.end_place),
        t.distance_m,
        t.max_speed_kmh,
        t.avg_speed_kmh,
        t.energy_used_pct,
        t.fuel_used_pct,
        t.ended_by,
        t.prior_ignition,
        t.prior_moving,
    )


def _core_trip(r: TripRecord) -> Trip:
    """Enough of a stored trip for ``window_start`` (start and prior ignition/motion)."""
    return Trip(
        r.start_at, r.end_at, None, None, r.distance_m, r.max_speed_kmh, r.energy_used_pct,
        r.fuel_used_pct, "parked", r.prior_ignition, r.prior_moving,
    )  # fmt: skip


class RulesWorker:
    """Runs the fleet rules and the trip detector for the partitions it holds."""

    def __init__(
        self,
        log: FleetLog,
        fleets: FleetRepository,
        open_reader: Callable[[], TelemetryReader],
        settings: WorkerSettings | None = None,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.log, self.settings, self.clock = log, settings or WorkerSettings(), clock
        self._open_reader = open_reader
        self._config = ConfigCache(fleets, clock)
        self._last_tick = 0
        #: the partitions held and their cursors, and when the leases were last renewed
        self._held: dict[int, tuple[int, int]] = {}
        self._renewed = -_FOREVER
        #: per vehicle, the next sample and event seq (one past the highest evaluated):
        #: what lets in-order rows go without the settle window
        self._next_sample: dict[VinKey, int] = {}
        self._next_event: dict[VinKey, int] = {}
        #: per vehicle of the partitions held, its rule and trip state as of the partition's
        #: cursor (read from the database when not here; decisions 0024, 0050)
        self._states: dict[VinKey, VinState] = {}
        #: the partitions whose states here are as of their cursor (replayed, or evaluated
        #: here since they were taken); the others are replayed before the next pass
        self._current: set[int] = set()
        #: per partition, the vehicles (with their account) whose state changed since the
        #: states were last written: what the next write holds, and what a tick reaches
        #: beside the stored ones
        self._dirty: dict[int, dict[VinKey, int]] = defaultdict(dict)
        #: the partitions with passes noted since their states were written
        self._noted: set[int] = set()
        #: per partition held, when its states were last written (or it was first seen
        #: here): each is written ``flush_ms`` after its own last write, not all at once
        #: (decision 0057), and when the last pass's commit was (:meth:`_due`)
        self._written_at: dict[int, int] = {}
        self._committed_at = clock()
        self._generation = self._config.generation
        #: the account of each vehicle's holding period seen (:meth:`_accounts_of`)
        self._accounts: dict[VinKey, int] = {}
        self._sample_rows: _LogBuffer[LoggedSample] = _LogBuffer()
        self._event_rows: _LogBuffer[LoggedEvent] = _LogBuffer()

    def _leases(self, now: int) -> dict[int, tuple[int, int]]:
        """The partitions held; the leases renewed (and free ones taken) every third of
        their time, not every step: a write transaction ten times a second would compete
        with the API's own writes for nothing."""
        s = self.settings
        if now - self._renewed >= s.lease_ms // 3:
            lapsed = now - self._renewed >= s.lease_ms
            held = self.log.take_partitions(s.owner, s.partitions, now=now, ttl_ms=s.lease_ms)
            self._forget(
                {p for p in self._held if p not in held}
                | {p for p, c in held.items() if lapsed or self._held.get(p) != c}
            )
            self._held, self._renewed = held, now
        return self._held

    def _forget(self, partitions: set[int]) -> None:
        """Drop the remembered states of ``partitions``: no longer held, or held again after
        a lapse or with a cursor another worker moved (it may have written them, or noted
        passes whose states only a replay gives)."""
        if partitions:
            n = self.settings.partitions
            for key in [k for k in self._states if partition_of(k[0], n) in partitions]:
                del self._states[key]
            for p in partitions:
                self._current.discard(p)
                self._dirty.pop(p, None)
                self._noted.discard(p)
                self._written_at.pop(p, None)

    def _forget_all(self) -> None:
        self._states.clear()
        self._current.clear()
        self._dirty.clear()
        self._noted.clear()
        self._written_at.clear()

    def step(self) -> int:
        """One pass; the number of log rows evaluated (0: nothing new)."""
        s, now = self.settings, self.clock()
        held = dict(self._leases(now))
        if not held:
            return 0
        tick = now - self._last_tick >= s.tick_ms
        reader = self._open_reader()
        try:
            behind = [p for p in held if p not in self._current]
            if behind:
                try:
                    self._replay(reader, {p: held[p] for p in behind})
                except Exception:  # half replayed: the next step starts them over
                    self._forget(set(behind))
                    raise
            read = self._read(reader, held, now)
            stored = self._stored_keys() if tick else {}
            parts = [
                self._partition(reader, partition, cursor, read, now if tick else None, stored)
                for partition, cursor in held.items()
            ]
        finally:
            reader.close()
        self._commit([p for p in parts if p is not None], held)
        if tick:
            self._last_tick = now
        return len(read.samples) + len(read.events)

    def stop(self) -> None:
        """Write the states held (a successor then replays nothing), release the leases."""
        try:
            if self._held and (self._noted or any(self._dirty.values())):
                self._commit([], self._held, flush_all=True)
        finally:
            self.log.release_partitions(self.settings.owner)
            self._held, self._renewed = {}, -_FOREVER
            self._forget_all()

    def _stored_keys(self) -> dict[int, list[tuple[VinKey, int]]]:
        """Per partition the vehicles with a stored state and their accounts (what a tick
        reaches, with those changed since the states were written)."""
        n = self.settings.partitions
        out: dict[int, list[tuple[VinKey, int]]] = defaultdict(list)
        for vin, tenure, account in self.log.all_vin_keys():
            out[partition_of(vin, n)].append(((vin, tenure), account))
        return out

    def _read(self, reader: TelemetryReader, held: dict[int, tuple[int, int]], now: int) -> _Read:
        s = self.settings
        low_s = min(c[0] for c in held.values())
        low_e = min(c[1] for c in held.values())
        ready = now - s.settle_ms
        sample_rows = self._sample_rows.after(low_s, s.batch, reader.samples_after)
        event_rows = self._event_rows.after(low_e, s.batch, reader.events_after)
        keys = {(r.vin, r.tenure) for r in sample_rows} | {(r.vin, r.tenure) for r in event_rows}
        accounts = self._accounts_of(keys)
        self._learn_next_seqs(accounts)

        def free(key: VinKey) -> bool:
            return key not in accounts

        samples, s_end = _ready_prefix(sample_rows, low_s, ready, self._next_sample, free)
        events, e_end = _ready_prefix(event_rows, low_e, ready, self._next_event, free)
        if len(sample_rows) == s.batch and samples:  # more samples wait: no event beyond them
            # a prefix by id (the cursor moves past every event up to the last kept): two
            # gateways may commit a later-received event first, which a filter would keep
            # while leaving out, for good, an earlier one received after the last sample
            last = samples[-1].received_at
            cut = next((i for i, e in enumerate(events) if e.received_at > last), len(events))
            events = events[:cut]
            e_end = events[-1].id if events else low_e
        read = _Read(samples, events, s_end, e_end, accounts)
        read.split(s.partitions)
        return read

    def _accounts_of(self, keys: set[VinKey]) -> dict[VinKey, int]:
        """The accounts that held the vehicles: a holding period's account never changes
        (another owner is another tenure), so one found is kept; one not found (not
        provisioned) is asked again next time."""
        known = self._accounts
        missing = [k for k in keys if k not in known]
        if missing:
            if len(known) > _ACCOUNTS_KEPT:
                known.clear()
            known.update(self.log.accounts_of(missing))
        return {k: known[k] for k in keys if k in known}

    def _learn_next_seqs(self, accounts: Mapping[VinKey, int]) -> None:
        """The next sample seq of vehicles not yet known here, from their rule state (what
        was evaluated last, whichever worker did it: held here, else stored, which may be
        older; then a row only waits the settle window). Event seqs are not in that
        state: a vehicle's first events seen by this worker wait the settle window."""
        unknown = [k for k in accounts if k not in self._next_sample]
        for key in [k for k in unknown if k in self._states]:
            last_seq = self._states[key][0].last_seq
            if last_seq is not None:
                self._next_sample[key] = last_seq + 1
        unknown = [k for k in unknown if k not in self._next_sample]
        for key, (rule_state, _) in self.log.vin_states(unknown).items():
            last = rule_state.get("last_seq")
            if isinstance(last, int):
                self._next_sample[key] = last + 1

    def _remember_next_seqs(
        self, per_vin: Mapping[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]]
    ) -> None:
        """After a committed step: each vehicle's next seqs are past what it evaluated."""
        for key, (samples, events) in per_vin.items():
            if samples:
                top = (samples[0].seq if len(samples) == 1 else max(r.seq for r in samples)) + 1
                self._next_sample[key] = max(self._next_sample.get(key, top), top)
            if events:
                top = max(r.seq for r in events) + 1
                self._next_event[key] = max(self._next_event.get(key, top), top)

    def _partition(
        self,
        reader: TelemetryReader,
        partition: int,
        cursor: tuple[int, int],
        read: _Read,
        tick_at: int | None,
        stored: Mapping[int, list[tuple[VinKey, int]]],
    ) -> _Pending | None:
        """One partition's step, to be committed with the pass's others (None: nothing
        to do)."""
        per_vin: dict[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]] = defaultdict(
            lambda: ([], [])
        )
        samples, events = read.parts.get(partition, ([], []))
        for sample in samples:
            if sample.id > cursor[0]:
                per_vin[(sample.vin, sample.tenure)][0].append(sample)
        for event in events:
            if event.id > cursor[1]:
                per_vin[(event.vin, event.tenure)][1].append(event)
        new_cursor = (max(cursor[0], read.sample_end), max(cursor[1], read.event_end))
        return self._evaluate(
            reader, partition, cursor, new_cursor, per_vin, read.accounts, tick_at, stored
        )

    def _evaluate(
        self,
        reader: TelemetryReader,
        partition: int,
        cursor: tuple[int, int],
        new_cursor: tuple[int, int],
        per_vin: dict[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]],
        known: Mapping[VinKey, int],
        tick_at: int | None,
        stored: Mapping[int, list[tuple[VinKey, int]]],
    ) -> _Pending | None:
        """A partition's pass over its rows ``per_vin`` (a live pass, or a noted one
        replayed: the same code, so the same states)."""
        accounts = {k: known[k] for k in per_vin if k in known}
        skipped = sorted(k for k in per_vin if k not in accounts)
        if tick_at is not None:
            dirty = self._dirty.get(partition, {})
            for key, account in [*stored.get(partition, ()), *dirty.items()]:
                per_vin.setdefault(key, ([], []))
                accounts[key] = account
        if not per_vin and new_cursor == cursor:
            return None
        states: dict[VinKey, VinState] = {}
        steps = self._steps(reader, per_vin, accounts, tick_at, states)
        return _Pending(
            PartitionStep(partition, cursor, new_cursor, steps),
            {k: v for k, v in per_vin.items() if k in accounts},
            states,
            PassNote(new_cursor, tick_at, skipped),
        )

    def _replay(self, reader: TelemetryReader, held: dict[int, tuple[int, int]]) -> None:
        """The states of partitions just taken (or held again after a lapse) brought to
        their cursor: the passes noted since their states were written, evaluated again
        over the same rows (each pass's id range of the log), ticks and skipped vehicles,
        their effects thrown away (they were committed with the pass)."""
        plan = self.log.replay_plan(held)
        todo = {p: v for p, v in plan.items() if v[1]}
        if todo:
            low = (min(v[0][0] for v in todo.values()), min(v[0][1] for v in todo.values()))
            high = (max(held[p][0] for p in todo), max(held[p][1] for p in todo))
            n = self.settings.partitions
            samples = self._rows_between(reader.samples_after, low[0], high[0], set(todo), n)
            events = self._rows_between(reader.events_after, low[1], high[1], set(todo), n)
            ticks = any(note.tick_at is not None for _, notes in todo.values() for note in notes)
            stored = self._stored_keys() if ticks else {}
            for partition, (start, notes) in todo.items():
                self._replay_partition(
                    reader, partition, start, notes, samples, events, stored, held[partition]
                )
                self._noted.add(partition)
            logger.info(
                "fleet partitions %s: %d passes replayed",
                sorted(todo),
                sum(len(v[1]) for v in todo.values()),
            )
        for partition in held:
            stored_at, notes = plan.get(partition, (held[partition], []))
            if not notes and stored_at != held[partition]:
                logger.warning(
                    "fleet partition %s: states as of %s, cursor %s, no pass noted",
                    partition,
                    stored_at,
                    held[partition],
                )
            self._current.add(partition)

    def _replay_partition(
        self,
        reader: TelemetryReader,
        partition: int,
        start: tuple[int, int],
        notes: list[PassNote],
        samples: Mapping[int, list[LoggedSample]],
        events: Mapping[int, list[LoggedEvent]],
        stored: Mapping[int, list[tuple[VinKey, int]]],
        cursor: tuple[int, int],
    ) -> None:
        rows_s, rows_e = samples.get(partition, []), events.get(partition, [])
        at = start
        for note in notes:
            per_vin: dict[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]] = defaultdict(
                lambda: ([], [])
            )
            lo = bisect.bisect_right(rows_s, at[0], key=_row_id)
            hi = bisect.bisect_right(rows_s, note.cursor[0], key=_row_id)
            for sample in rows_s[lo:hi]:
                per_vin[(sample.vin, sample.tenure)][0].append(sample)
            lo = bisect.bisect_right(rows_e, at[1], key=_row_id)
            hi = bisect.bisect_right(rows_e, note.cursor[1], key=_row_id)
            for event in rows_e[lo:hi]:
                per_vin[(event.vin, event.tenure)][1].append(event)
            skipped = set(note.skipped)
            accounts = self._accounts_of({k for k in per_vin if k not in skipped})
            pending = self._evaluate(
                reader, partition, at, note.cursor, per_vin, accounts, note.tick_at, stored
            )
            if pending is not None:
                self._applied(pending)
            at = note.cursor
        if at != cursor:
            logger.warning(
                "fleet partition %s: the passes noted end at %s, its cursor is %s",
                partition,
                at,
                cursor,
            )

    def _rows_between(
        self,
        read: Callable[..., list[RowT]],
        low: int,
        high: int,
        partitions: set[int],
        count: int,
    ) -> dict[int, list[RowT]]:
        """The log's rows with ids in (``low``, ``high``] of ``partitions``, by partition."""
        out: dict[int, list[RowT]] = defaultdict(list)
        after = low
        while after < high:
            rows = read(after, limit=self.settings.batch)
            if not rows:
                break
            for row in rows:
                if row.id > high:
                    break
                p = partition_of(row.vin, count)
                if p in partitions:
                    out[p].append(row)
            after = rows[-1].id
        return out

    def _applied(self, p: _Pending) -> None:
        """A partition's pass done (committed, or replayed): its states and next seqs."""
        self._remember_next_seqs(p.evaluated)
        self._states.update(p.states)
        dirty = self._dirty[p.step.partition]
        for step in p.step.steps:
            dirty[(step.vin, step.tenure)] = step.account_id

    def _commit(
        self, pending: list[_Pending], held: Mapping[int, tuple[int, int]], flush_all: bool = False
    ) -> None:
        """Every partition's step of the pass in one transaction (one commit instead of one
        per partition); all dropped if any lease was lost meanwhile. The states are written
        (per partition, with its cursor) when due (decision 0050), else the pass is noted."""
        now = self.clock()
        changed = self._config.generation != self._generation
        every = flush_all or changed or self.settings.flush_ms <= 0
        since, self._committed_at = max(0, now - self._committed_at), now
        due = set(held) if every else self._due(held, now, since)
        by_partition = {p.step.partition: p for p in pending}
        steps = []
        flushed = []
        written: dict[VinKey, tuple[RuleState, Any]] = {}
        for partition in held:
            p = by_partition.get(partition)
            recomputed = p is not None and any(s.replace_from is not None for s in p.step.steps)
            if partition in due or recomputed:
                if p is None and partition not in self._noted:
                    self._written_at[partition] = now  # its stored states are as of its cursor
                    continue
                states = self._state_writes(partition, p, written)
                cursor = held[partition] if p is None else p.step.cursor
                done = p.step.steps if p is not None else []
                steps.append(PartitionStep(partition, held[partition], cursor, done, states))
                flushed.append(partition)
            elif p is not None:
                steps.append(replace(p.step, behind=p.note))
        try:
            self.log.commit_partitions(self.settings.owner, steps, now=now)
        except LeaseLost as lost:
            logger.info("fleet partition %s was taken over; the pass is dropped", lost)
            self._renewed = -_FOREVER  # look again at what is still held
            self._forget_all()
            return
        for p in pending:
            self._held[p.step.partition] = p.step.cursor
            self._applied(p)
            self._noted.add(p.step.partition)
        for partition in flushed:
            self._wrote(partition, written)
            self._written_at[partition] = now
        if every:
            self._generation = self._config.generation

    def _due(self, held: Mapping[int, tuple[int, int]], now: int, since: int) -> set[int]:
        """The partitions whose states this pass writes (when nothing makes it write every
        one): those last written ``flush_ms`` ago or more, the oldest first, at most the
        share of the held partitions that the time ``since`` the last pass is of ``flush_ms``
        (rounded up). Writing every held partition's states in one pass every
        ``flush_ms`` held up that pass's alerts and the next passes' (decision 0057); so
        the writes are spread over the interval, each partition's states still written
        about every ``flush_ms`` (at most twice that when many come due at once)."""
        flush_ms = self.settings.flush_ms
        for partition in held:
            self._written_at.setdefault(partition, now)
        ripe = sorted(
            (at, p) for p, at in self._written_at.items() if p in held and now - at >= flush_ms
        )
        quota = -(-len(held) * since // flush_ms)  # rounded up: one at least, once time passed
        return {p for _, p in ripe[:quota]}

    def _state_writes(
        self,
        partition: int,
        p: _Pending | None,
        written: dict[VinKey, tuple[RuleState, Any]],
    ) -> list[StateWrite]:
        """The states of ``partition``'s vehicles changed since they were last written
        (with those of the pass ``p``), as JSON."""
        changed = dict(self._dirty.get(partition, {}))
        after: Mapping[VinKey, VinState] = {} if p is None else p.states
        if p is not None:
            changed.update({(s.vin, s.tenure): s.account_id for s in p.step.steps})
        out = []
        for key in changed:
            rs, ts, previous = after.get(key) or self._states[key]
            rule_json = rule_state_to_json(rs, previous)
            out.append(StateWrite(key[0], key[1], rule_json, trip_state_to_json(ts)))
            written[key] = (rs, rule_json)
        return out

    def _wrote(self, partition: int, written: Mapping[VinKey, tuple[RuleState, Any]]) -> None:
        """The partition's states were written: what it wrote is what a next write builds
        on (the parts unchanged are not built again)."""
        for key in self._dirty.pop(partition, {}):
            rs, ts, _ = self._states[key]
            done = written.get(key)
            if done is not None and done[0] is rs:
                self._states[key] = (rs, ts, done)
        self._noted.discard(partition)

    def _steps(
        self,
        reader: TelemetryReader,
        per_vin: dict[VinKey, tuple[list[LoggedSample], list[LoggedEvent]]],
        accounts: dict[VinKey, int],
        tick_at: int | None,
        after: dict[VinKey, VinState],
    ) -> list[VinStep]:
        """The vehicles' steps; ``after`` receives each one's state after it (what the
        memory holds once the pass is committed)."""
        states = self._vin_states([k for k in per_vin if k in accounts])
        by_account: dict[int, list[str]] = defaultdict(list)
        for (vin, _), account in accounts.items():
            by_account[account].append(vin)
        configs = {
            account: self._config.for_vins(account, vins) for account, vins in by_account.items()
        }
        steps = []
        for key, (samples, events) in per_vin.items():
            known = accounts.get(key)
            if known is None:
                continue  # not provisioned: nobody to alert
            account = known
            rules, trips = configs[account][key[0]]
            before = states[key]
            after[key] = before
            step = VinStep(key[0], key[1], account, {}, {})
            try:
                ss = _core_samples(samples)
                items = _core_items(ss, events) if events else ss
                new = self._run_vin(reader, step, before, items, ss, rules, trips, tick_at)
            except Exception:  # one vehicle's bad data must not stop every other's rules
                logger.exception(
                    "fleet rules failed for %s (tenure %s); its items are skipped", *key
                )
                continue
            if samples or events or step.alerts:
                steps.append(step)
                after[key] = new
        return steps

    def _vin_states(self, keys: list[VinKey]) -> dict[VinKey, VinState]:
        """The vehicles' states: remembered, else read from the database, else new."""
        missing = [k for k in keys if k not in self._states]
        read = self.log.vin_states(missing) if missing else {}
        out = {}
        for key in keys:
            known = self._states.get(key)
            if known is None:
                rule_json, trip_json = read.get(key, ({}, {}))
                rule_state = rule_state_from_json(rule_json)
                written = (rule_state, rule_json) if rule_json else None
                known = (rule_state, trip_state_from_json(trip_json), written)
            out[key] = known
        return out

    def _run_vin(
        self,
        reader: TelemetryReader,
        step: VinStep,
        state: VinState,
        items: Sequence[Sample | VehicleEvent],
        samples: Sequence[Sample],
        rules: RuleSettings,
        cfg: TripSettings,
        tick_at: int | None,
    ) -> VinState:
        """Evaluate one vehicle's items from ``state``; fills ``step`` with the effects,
        and returns the new state (its JSON is built when the states are written)."""
        rs, ts, written = state
        every = items if tick_at is None else [*items, Tick(tick_at)]
        rs, changes = evaluate_many(rs, every, rules)
        if changes:
            step.alerts.extend(_alert_write(c) for c in changes)
        fed = feed_many(ts, samples, cfg)
        ts, closed, late = fed.state, list(fed.closed), fed.late_ms
        if late is not None:
            ts = self._recompute(reader, step, closed, ts, late, cfg)
        else:
            step.trips = [_trip_write(t) for t in closed]
        return rs, ts, written

    def _recompute(
        self,
        reader: TelemetryReader,
        step: VinStep,
        closed: list[Trip],
        state: TripState,
        late_ms: int,
        cfg: TripSettings,
    ) -> TripState:
        """Trips from the window of a late sample on, recomputed over the stored samples;
        they replace the stored ones from the window's start."""
        stored = [_core_trip(r) for r in self.log.vin_trips(step.vin, step.tenure)]
        window = window_start([*stored, *closed], state, late_ms)
        start = window.start_ms if window.start_ms is not None else -_FOREVER
        rows = reader.vehicle_samples(
            step.vin, tenure=step.tenure, start=start, end=_FOREVER, limit=_RECOMPUTE_LIMIT
        )
        result = recompute(
            (Sample(r.ts, r.values, r.seq, r.received_at) for r in rows), cfg, window.initial
        )
        kept = [t for t in closed if t.start_ms < start]
        step.trips = [_trip_write(t) for t in [*kept, *result.trips]]
        step.replace_from = start
        return result.state


#: how often a thread waiting for a wake-up looks whether it should stop
_STOP_CHECK_S = 0.25


class WorkerThread:
    """Runs a :class:`RulesWorker` in a daemon thread until :meth:`stop`; a failing step
    is logged and retried after a pause (a database that is briefly away must not end the
    rules for good)."""

    def __init__(self, worker: RulesWorker, busy: Callable[[], bool] | None = None) -> None:
        self.worker = worker
        #: whether people are being served (a request began within the last second); the
        #: worker rests after a step only then (None: always)
        self._busy = busy
        #: called after a step that evaluated something (committed): the API wakes its
        #: event bus with it, so the alerts' events go out now rather than at its next poll
        self.on_commit: Callable[[], None] | None = None
        #: the pause after a step that found nothing, ended early by a wake-up (the
        #: gateway's commit, ``gateway.notify.wake.WakeSocket.wait``; decision 0063): the
        #: next pass starts when there is something to evaluate, not at the next poll.
        #: None: the pause is the poll alone
        self.wake_wait: Callable[[float], bool] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-rules", daemon=True)

    @property
    def native_id(self) -> int | None:
        """The thread's id in the operating system (None before :meth:`start`)."""
        return self._thread.native_id

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        try:
            self.worker.stop()
        except Exception:  # shutting down: the leases expire by themselves
            logger.exception("releasing the fleet partitions failed")

    def _run(self) -> None:
        poll = self.worker.settings.poll_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                busy = self.worker.step() > 0
                if busy and self.on_commit is not None:
                    self.on_commit()
            except Exception:
                logger.exception("fleet rules step failed; retrying")
                busy = False
                self._stop.wait(max(poll, 1.0))
            # it shares the API process (and its GIL) with the command path: while people
            # are served, rest after a step at least as long as the step took, so a
            # person's request gets the better half of the process however busy telemetry
            # is (decision 0022); with nobody asking, the rest would protect no one and
            # halve the rules' rate (decision 0024)
            spent = time.monotonic() - started
            rest = spent * REST_PER_STEP if self._busy is None or self._busy() else 0.0
            pause = max(rest, 0.0 if busy else poll)
            if pause > 0 and rest <= 0 and self.wake_wait is not None:
                self._wait_for_wake(self.wake_wait, pause)
            else:
                self._stop.wait(pause)

    def _wait_for_wake(self, wake_wait: Callable[[float], bool], pause: float) -> None:
        """Up to ``pause`` seconds, ended by a wake-up or :meth:`stop`."""
        deadline = time.monotonic() + pause
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or wake_wait(min(left, _STOP_CHECK_S)):
                return
