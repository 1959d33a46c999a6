"""The embedded telemetry store: one SQLite database file in the data directory.

Why SQLite by default: no server to install, transactional (a batch and its
acknowledgement are all-or-nothing), and fast enough for a single site when written in
large transactions (see docs/decisions/0003-sqlite-embedded-store.md for the figures).

Schema (``PRAGMA user_version`` tracks it; :data:`SCHEMA_VERSION`):

* ``vehicles``: one row per (VIN, tenure), the tenure being the VIN's holding period (see
  ``gateway.store.base``), with an integer id used as the key everywhere else, the online
  flag and first/last-seen times. Keying the row by tenure is what separates holders:
  samples, latest state, events, status and seq tracking hang off the row's id, so a new
  holder's vehicle starts empty and its seq 1, 2, ... are new samples, not duplicates of
  the previous holder's;
* ``samples``: ``(vehicle_id, seq)`` is unique, which is what makes redelivered messages
  harmless (``INSERT OR IGNORE``); the signals of a sample are one packed blob
  (``gateway.store.packing``, ~110 bytes for 28 signals where JSON took ~1,300) with a
  mask of the signal ids in it, so history skips samples without the asked signals; an index on
  ``(vehicle_id, ts)`` serves history queries. Rows live in a rowid table, appended in
  arrival order, so the two indexes carry only small keys: twice as fast to insert as a
  ``WITHOUT ROWID`` table keyed on (vehicle_id, seq) with the same second index;
* ``latest_state``: one row per vehicle, its signals' newest values by sample time with
  their times (``gateway.store.packing.merge_state``), so a late store-and-forward
  batch never overwrites fresher values; merged in the write transaction (schema 5: one
  row per vehicle and signal before, 28 upserts per full report);
* ``events``: vehicle-side events, deduplicated on ``(vehicle_id, seq)``, in a rowid table
  (since version 4) so that, like samples, they can be read in commit order;
* ``quarantine``: everything refused, with reason, topic and raw payload: the whole payload
  up to ``quarantine_payload_bytes`` (4 KiB by default), else its first bytes, always with
  the whole payload's size and SHA-256, so a flood of large bad messages costs a few KiB
  each, not what the sender chose (1,000 refused 262 KB messages were 270 MB before); and
  the tenure of the vehicle it concerns when the gateway knew it;
* ``counters``: ingest counters, incremented in the same transaction as the data they count;
* ``seq_tracking`` and ``seq_gaps``: per vehicle and stream (``telemetry``, ``events``) the
  range of ``seq`` numbers received, how many of them are missing, and the missing ones as
  intervals (``gateway.core.seqgaps``), updated in the commit that stores the numbers.
  Created with ``IF NOT EXISTS`` by any version, so an older file simply starts tracking.

Schema history: 1 the first; 2 the quarantine's payload size and hash; 3 (ownership
periods) ``vehicles`` keyed by (VIN, tenure) and ``quarantine.tenure``; 4 (fleet rules)
``events`` gets a row id; 5 (fleet scale, decision 0027) packed samples, one latest-state
row per vehicle. Opening an older file as a writer upgrades it in one transaction; its
vehicles become tenure 1 (each VIN's holder at the time of the upgrade: data from before
cannot be told apart by holder).

Retention (:meth:`SqliteTelemetryStore.prune_samples`, :meth:`prune_quarantine`): old rows
go in chunks of a few thousand, each its own short transaction, oldest first by id (ids
grow with arrival), so ingest commits interleave and no statement scans the whole table.
The newest sample and event always stay: a rowid table hands out ``max(id) + 1``, so an
emptied table would reuse ids behind a reader's cursor.

The log (:meth:`SqliteTelemetryStore.samples_after`, :meth:`events_after`): rows by id after a
cursor. SQLite has one writer at a time and a transaction's new rows get ids above every
committed row, so a reader that has seen id N never later sees a new row below N: the id is
a cursor across processes (the fleet rules worker reads the log this way, decision 0014).
The gateway runs them periodically (``gateway.retention``).

Durability: WAL journal with ``synchronous=FULL`` by default, so a committed (and therefore
acknowledged) batch survives a power cut, not just a process crash; each commit costs one
fsync, which the batching amortises.
"""

from __future__ import annotations

import bisect
import hashlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, cast

import orjson

from gateway import metrics
from gateway.core import seqgaps
from gateway.errors import StoreError
from gateway.files import private_sqlite_file
from gateway.store import packing
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
    StoredQuarantine,
    VehicleState,
    VehicleSummary,
)
from schemas import SignalValue, StatusState

__all__ = ["DEFAULT_QUARANTINE_PAYLOAD_BYTES", "SCHEMA_VERSION", "SqliteTelemetryStore"]

#: 2: quarantine.payload_size and payload_sha256 (the payload may be only a prefix);
#: 3: vehicles keyed by (vin, tenure), quarantine.tenure (ownership periods)
#: 4: events in a rowid table (read in commit order by the fleet rules worker)
#: 5: samples' signals packed (``gateway.store.packing``) with a mask of the signal ids
#: (rows written before stay JSON text and are read as such); latest state one row
#: per vehicle (``latest_state``, converted from ``latest``)
SCHEMA_VERSION = 5
#: the most bytes of one refused payload the quarantine keeps
DEFAULT_QUARANTINE_PAYLOAD_BYTES: Final = 4096

_VEHICLES = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    vin TEXT NOT NULL,
    tenure INTEGER NOT NULL DEFAULT 1,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    online INTEGER,
    status_changed_at INTEGER,
    UNIQUE (vin, tenure)
);
"""

_EVENTS = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY,
    vehicle_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    type TEXT NOT NULL,
    code TEXT,
    detail TEXT,
    UNIQUE (vehicle_id, seq)
);
"""

_SCHEMA = (
    _VEHICLES.format(name="vehicles")
    + """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    vehicle_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    signals BLOB NOT NULL,
    mask INTEGER,
    UNIQUE (vehicle_id, seq)
);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (vehicle_id, ts);
CREATE TABLE IF NOT EXISTS latest_state (
    vehicle_id INTEGER PRIMARY KEY,
    state BLOB NOT NULL
);
"""
    + _EVENTS.format(name="events")
    + """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    vin TEXT,
    seq INTEGER,
    signal TEXT,
    payload BLOB NOT NULL,
    payload_size INTEGER,
    payload_sha256 TEXT,
    tenure INTEGER
);
CREATE INDEX IF NOT EXISTS quarantine_by_reason ON quarantine (reason, id);
CREATE INDEX IF NOT EXISTS quarantine_by_vin ON quarantine (vin, id);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (name, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_tracking (
    vehicle_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    missing INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seq_gaps (
    vehicle_id INTEGER NOT NULL,
    stream TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, stream, start)
) WITHOUT ROWID;
"""
)

#: version 1 -> 2: the quarantine's payload size and hash
_UPGRADE_1_TO_2 = """
ALTER TABLE quarantine ADD COLUMN payload_size INTEGER;
ALTER TABLE quarantine ADD COLUMN payload_sha256 TEXT;
"""

#: version 2 -> 3: ``vehicles`` keyed by (vin, tenure) instead of vin (a rebuild: SQLite
#: cannot drop a UNIQUE constraint; the table has one row per vehicle, so it is quick), its
#: ids kept so samples, latest state, events and seq tracking stay attached
_UPGRADE_2_TO_3_VEHICLES = (
    _VEHICLES.format(name="vehicles_v3")
    + """
INSERT INTO vehicles_v3 (id, vin, tenure, first_seen, last_seen, online, status_changed_at)
    SELECT id, vin, 1, first_seen, last_seen, online, status_changed_at FROM vehicles;
DROP TABLE vehicles;
ALTER TABLE vehicles_v3 RENAME TO vehicles;
"""
)
#: ... and the quarantine gets a tenure
_UPGRADE_2_TO_3_QUARANTINE = "ALTER TABLE quarantine ADD COLUMN tenure INTEGER;"

#: version 3 -> 4: ``events`` with a row id (a rebuild; old events get ids in arrival order)
_UPGRADE_3_TO_4_EVENTS = (
    _EVENTS.format(name="events_v4")
    + """
INSERT INTO events_v4 (vehicle_id, seq, ts, received_at, type, code, detail)
    SELECT vehicle_id, seq, ts, received_at, type, code, detail FROM events
    ORDER BY received_at, vehicle_id, seq;
DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;
"""
)

#: version 4 -> 5: the signal mask (no rewrite: older rows keep their JSON and no mask)
_UPGRADE_4_TO_5_SAMPLES = "ALTER TABLE samples ADD COLUMN mask INTEGER;"

#: the newest row per VIN: no row of the same VIN with a higher tenure (the UNIQUE (vin,
#: tenure) index answers the subquery)
_NEWEST_TENURE = (
    "NOT EXISTS (SELECT 1 FROM vehicles AS newer "
    "WHERE newer.vin = vehicles.vin AND newer.tenure > vehicles.tenure)"
)

#: the missing telemetry and event numbers of ``vehicles``' row, for the summaries
_MISSING = (
    "coalesce((SELECT missing FROM seq_tracking t WHERE t.vehicle_id = vehicles.id "
    "AND t.stream = 'telemetry'), 0), "
    "coalesce((SELECT missing FROM seq_tracking t WHERE t.vehicle_id = vehicles.id "
    "AND t.stream = 'events'), 0)"
)

#: the newest row of a log table stays (see the module docstring: ids are never reused)
_KEEP_NEWEST = " AND id < (SELECT max(id) FROM {table})"
_LOGS = frozenset({"samples", "events"})
# the vehicle a quarantine entry counts against: its topic's `v1/vehicles/<VIN>` (29
# characters), bound by the broker to the credential that published it
_HOLDER = "substr(topic, 1, 29)"
_TELEMETRY: Final = metrics.STREAM_TELEMETRY

Synchronous = Literal["FULL", "NORMAL"]


class SqliteTelemetryStore:
    """SQLite implementation of both :class:`TelemetryStore` and :class:`TelemetryReader`.

    A writer (``readonly=False``) creates the schema; readers open the same file from other
    processes. Each instance owns one connection and must be used from one thread at a time
    (the ingest pipeline commits from a single writer thread).
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 30_000,
        quarantine_payload_bytes: int = DEFAULT_QUARANTINE_PAYLOAD_BYTES,
    ) -> None:
        self.path = path
        self.quarantine_payload_bytes = quarantine_payload_bytes
        self._vehicle_ids: dict[tuple[str, int], int] = {}
        #: the row ids of the last commit's samples, in the batch's order, when every one
        #: of them was new (None otherwise): the InfluxDB store ships them from memory
        self.committed_sample_ids: range | None = None
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                private_sqlite_file(path)  # every vehicle's whereabouts: owner only (0600)
                self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute(f"PRAGMA synchronous = {synchronous}")
                # keep the hot index pages of large batches in memory (64 MiB)
                self._db.execute("PRAGMA cache_size = -65536")
                self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"open {path}", exc) from exc

    # --- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create the schema, or upgrade an older file to it, in one write transaction (the
        version is read inside it: gateways, the API and the command service open the file
        at the same time, and only the first of them upgrades)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    "open the database",
                    RuntimeError(
                        f"{self.path} has schema version {version}, newer than this gateway's "
                        f"{SCHEMA_VERSION}; upgrade the gateway"
                    ),
                )
            # each step changes the tables it is about, where the file has them (a table
            # it lacks is created by _SCHEMA below, in its newest form)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            if version == 1 and "quarantine" in tables:
                _run_script(db, _UPGRADE_1_TO_2)
            if version in (1, 2) and "vehicles" in tables:
                _run_script(db, _UPGRADE_2_TO_3_VEHICLES)
            if version in (1, 2) and "quarantine" in tables:
                _run_script(db, _UPGRADE_2_TO_3_QUARANTINE)
            if version in (1, 2, 3) and "events" in tables:
                _run_script(db, _UPGRADE_3_TO_4_EVENTS)
            if version in (1, 2, 3, 4) and "samples" in tables:
                _run_script(db, _UPGRADE_4_TO_5_SAMPLES)
            # every version: the tables a version added (seq tracking) if they are missing
            _run_script(db, _SCHEMA)
            if version in (1, 2, 3, 4) and "latest" in tables:
                _pack_latest(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- writing ------------------------------------------------------------------------

    def commit(self, batch: IngestBatch) -> CommitResult:
        db = self._db
        self.committed_sample_ids = None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = self._write(batch)
            except BaseException:
                self.committed_sample_ids = None
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # ids handed out inside the failed transaction may not exist
            self._vehicle_ids.clear()
            self.committed_sample_ids = None
            raise StoreError("commit a batch", exc) from exc
        return result

    def _vehicle_id(self, vin: str, tenure: int, at: int, *, heard: bool = True) -> int:
        """The id of the vehicle's row for ``tenure``, the row created if new; ``heard``:
        ``at`` is a time it was heard from, so a known row's ``last_seen`` moves up to it."""
        key = (vin, tenure)
        vid = self._vehicle_ids.get(key)
        if vid is None:
            seen = "max(last_seen, excluded.last_seen)" if heard else "last_seen"
            row = self._db.execute(
                "INSERT INTO vehicles (vin, tenure, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (vin, tenure) DO UPDATE SET last_seen = {seen} RETURNING id",
                (vin, tenure, at, at),
            ).fetchone()
            vid = self._vehicle_ids[key] = int(row[0])
        return vid

    def _write(self, batch: IngestBatch) -> CommitResult:
        """One batch, inside the caller's transaction, in named steps; the row of every
        sample and event is looked up before counting what is stored (a lookup may insert
        the row)."""
        rows = _BatchRows(self, batch)
        self._touch_seen(batch, rows)
        sample_ids = [rows.at(s.vin, s.ts) for s in batch.samples]
        event_ids = [rows.at(e.vin, e.ts) for e in batch.events]
        samples_stored = self._insert_samples(batch, sample_ids)
        self._update_latest(batch, sample_ids)
        events_stored = self._insert_events(batch, event_ids)
        self._apply_statuses(batch, rows)
        self._db.executemany(
            "INSERT INTO quarantine "
            "(received_at, topic, reason, detail, vin, seq, signal, tenure, payload, "
            "payload_size, payload_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            self._quarantine_rows(batch),
        )
        result = CommitResult(
            samples_stored=samples_stored,
            sample_duplicates=len(batch.samples) - samples_stored,
            events_stored=events_stored,
            event_duplicates=len(batch.events) - events_stored,
            quarantined=len(batch.quarantine),
        )
        self._add_counters(batch, result, sample_ids, event_ids)
        return result

    def _touch_seen(self, batch: IngestBatch, rows: _BatchRows) -> None:
        for vin, seen in batch.seen.items():
            self._db.execute(
                "UPDATE vehicles SET last_seen = max(last_seen, ?) WHERE id = ?",
                (seen, rows.current(vin, seen)),
            )

    def _insert_samples(self, batch: IngestBatch, ids: Sequence[int]) -> int:
        """Store the samples, a duplicate (vehicle row, seq) ignored; returns how many were
        new."""
        db, at, pack, mask = self._db, batch.received_at, packing.pack, packing.mask
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO samples (vehicle_id, seq, ts, received_at, signals, mask) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (v, s.seq, s.ts, at, pack(s.signals), mask(s.signals))
                for v, s in zip(ids, batch.samples, strict=True)
            ],
        )
        stored = db.total_changes - before
        if stored and stored == len(batch.samples):
            # a new row's id is the largest so far plus one, and this transaction is the
            # only writer: the batch's samples got consecutive ids, in order
            (last,) = db.execute("SELECT last_insert_rowid()").fetchone()
            self.committed_sample_ids = range(last - stored + 1, last + 1)
        return stored

    def _update_latest(self, batch: IngestBatch, ids: Sequence[int]) -> None:
        """Each signal's newest value per vehicle row: the batch's newest, kept only if it is
        not older than the stored one. One row per vehicle, read and rewritten here (inside
        the write transaction, so no other writer interleaves): a 28-signal sample was 28
        upserts of a (vehicle, signal) row before, 72 % of the commit's CPU."""
        newest: dict[int, dict[str, tuple[SignalValue, int]]] = {}
        for v, s in zip(ids, batch.samples, strict=True):
            mine = newest.setdefault(v, {})
            ts = s.ts
            for path, value in s.signals.items():
                held = mine.get(path)
                if held is None or ts >= held[1]:
                    mine[path] = (value, ts)
        if not newest:
            return
        db, merge = self._db, packing.merge_state
        stored = dict(
            db.execute(
                "SELECT vehicle_id, state FROM latest_state "
                "WHERE vehicle_id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(list(newest)).decode(),),
            ).fetchall()
        )
        rows = []
        for v, mine in newest.items():
            state = merge(stored.get(v), mine)
            if state is not None:
                rows.append((v, state))
        db.executemany(
            "INSERT INTO latest_state (vehicle_id, state) VALUES (?, ?) "
            "ON CONFLICT (vehicle_id) DO UPDATE SET state = excluded.state",
            rows,
        )

    def _insert_events(self, batch: IngestBatch, ids: Sequence[int]) -> int:
        """Store the events, a duplicate (vehicle row, seq) ignored; returns how many were
        new."""
        db, at = self._db, batch.received_at
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO events (vehicle_id, seq, ts, received_at, type, code, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (v, e.seq, e.ts, at, e.type.value, e.code, e.detail)
                for v, e in zip(ids, batch.events, strict=True)
            ],
        )
        return db.total_changes - before

    def _apply_statuses(self, batch: IngestBatch, rows: _BatchRows) -> None:
        for change in batch.statuses:
            online = int(change.state is StatusState.ONLINE)
            if change.retained:
                # a retained status replayed at (re)subscription: the state, but no time.
                # Only a different state changes anything, and then the time of the change
                # is unknown; last_seen stays when the vehicle was last heard
                self._db.execute(
                    "UPDATE vehicles SET online = ?, status_changed_at = NULL "
                    "WHERE id = ? AND (online IS NULL OR online != ?)",
                    (online, rows.current(change.vin, change.at, heard=False), online),
                )
                continue
            self._db.execute(
                "UPDATE vehicles SET online = ?, status_changed_at = ? "
                "WHERE id = ? AND (status_changed_at IS NULL OR status_changed_at <= ?)",
                (online, change.at, rows.current(change.vin, change.at), change.at),
            )

    def _add_counters(
        self,
        batch: IngestBatch,
        result: CommitResult,
        sample_ids: Sequence[int],
        event_ids: Sequence[int],
    ) -> None:
        """The batch's counters, the seq-gap counters and the stored/duplicate counts, added
        to the persistent ones."""
        counters = dict(batch.counters)
        for stream, ids, seqs in (
            (metrics.STREAM_TELEMETRY, sample_ids, [s.seq for s in batch.samples]),
            (metrics.STREAM_EVENTS, event_ids, [e.seq for e in batch.events]),
        ):
            if seqs:
                by_vehicle: dict[int, list[int]] = {}
                for v, seq in zip(ids, seqs, strict=True):
                    by_vehicle.setdefault(v, []).append(seq)
                self._track_seqs(stream, by_vehicle, counters)
        for name, delta in (
            (metrics.SAMPLES_STORED, result.samples_stored),
            (metrics.SAMPLES_DUPLICATE, result.sample_duplicates),
            (metrics.EVENTS_STORED, result.events_stored),
            (metrics.EVENTS_DUPLICATE, result.event_duplicates),
        ):
            counters[(name, "")] = counters.get((name, ""), 0) + delta
        self._db.executemany(
            "INSERT INTO counters (name, label, value) VALUES (?, ?, ?) "
            "ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value",
            [(name, label, delta) for (name, label), delta in counters.items()],
        )

    def _track_seqs(
        self,
        stream: str,
        by_vehicle: Mapping[int, list[int]],
        counters: dict[tuple[str, str], float],
    ) -> None:
        """Update the seq ranges and gaps of the vehicles in ``by_vehicle`` (vehicle id ->
        the seq numbers of this batch) and add the gap counters' deltas to ``counters``. One
        read of the ranges and one write per batch; gap rows are read only for a vehicle
        whose numbers fall inside its range (late, or a redelivery)."""
        db = self._db
        ranges = {
            row[0]: seqgaps.SeqRange(row[1], row[2], row[3])
            for row in db.execute(
                "SELECT vehicle_id, first_seq, last_seq, missing FROM seq_tracking "
                "WHERE stream = ? AND vehicle_id IN (SELECT value FROM json_each(?))",
                (stream, orjson.dumps(list(by_vehicle)).decode()),
            )
        }
        updates: list[tuple[int, str, int, int, int]] = []
        removed: list[tuple[int, str, int]] = []
        added: list[tuple[int, str, int, int]] = []
        detected = missing_delta = 0
        for vehicle, seqs in by_vehicle.items():
            state = ranges.get(vehicle)
            ordered = sorted(set(seqs))
            span = seqgaps.inside(state, ordered)
            known = () if span is None else self._gaps_holding(vehicle, stream, ordered, span)
            step = seqgaps.advance(state, ordered, known)
            new = step.state
            if new != state:
                updates.append((vehicle, stream, new.first, new.last, new.missing))
            removed += [(vehicle, stream, g.start) for g in step.removed]
            added += [(vehicle, stream, g.start, g.end) for g in step.added]
            detected += step.detected
            missing_delta += new.missing - (state.missing if state is not None else 0)
        db.executemany(
            "INSERT INTO seq_tracking (vehicle_id, stream, first_seq, last_seq, missing) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (vehicle_id, stream) DO UPDATE SET "
            "first_seq = excluded.first_seq, last_seq = excluded.last_seq, "
            "missing = excluded.missing",
            updates,
        )
        if removed:
            db.executemany(
                "DELETE FROM seq_gaps WHERE vehicle_id = ? AND stream = ? AND start = ?", removed
            )
        if added:
            db.executemany(
                "INSERT INTO seq_gaps (vehicle_id, stream, start, end) VALUES (?, ?, ?, ?)", added
            )
        if detected:
            key = (metrics.SEQ_GAPS, stream)
            counters[key] = counters.get(key, 0) + detected
        if missing_delta:
            key = (metrics.SEQ_MISSING, stream)
            counters[key] = counters.get(key, 0) + missing_delta

    def _gaps_holding(
        self, vehicle: int, stream: str, numbers: Sequence[int], span: tuple[int, int]
    ) -> list[seqgaps.Gap]:
        """The stored gaps that hold one of ``numbers`` (sorted) within ``span``: what
        :func:`seqgaps.advance` needs. At most two index seeks per gap found or per run of
        numbers already received, so a batch's cost follows its own numbers, not how many
        gaps its vehicle has (security review 5: reading every gap between a batch's lowest
        and highest number let one unit with a million gaps cost the gateway a second of CPU
        per two-sample message)."""
        db = self._db
        at_or_below = (
            "SELECT start, end FROM seq_gaps WHERE vehicle_id = ? AND stream = ? "
            "AND start <= ? ORDER BY start DESC LIMIT 1"
        )
        above = (
            "SELECT start, end FROM seq_gaps WHERE vehicle_id = ? AND stream = ? "
            "AND start > ? ORDER BY start LIMIT 1"
        )
        low, high = span
        i = bisect.bisect_left(numbers, low)
        end = bisect.bisect_right(numbers, high)
        found: list[seqgaps.Gap] = []
        while i < end:
            n = numbers[i]
            row = db.execute(at_or_below, (vehicle, stream, n)).fetchone()
            if row is None or row[1] < n:  # n was received: the next gap, if any
                row = db.execute(above, (vehicle, stream, n)).fetchone()
                if row is None or row[0] > high:
                    break
            gap = seqgaps.Gap(row[0], row[1])
            first = bisect.bisect_left(numbers, gap.start, i, end)
            past = bisect.bisect_right(numbers, gap.end, first, end)
            if past > first:
                found.append(gap)
            i = max(past, first)
        return found

    def _quarantine_rows(self, batch: IngestBatch) -> list[tuple[Any, ...]]:
        """Rows of the batch's quarantine entries: payloads cut to the limit, each with its
        whole size and hash, computed once per payload (a message refused for several
        signals is one payload in several entries)."""
        cap = self.quarantine_payload_bytes
        kept: dict[int, tuple[bytes, int, str]] = {}
        rows = []
        for q in batch.quarantine:
            payload = q.payload
            stored = kept.get(id(payload))
            if stored is None:
                digest = hashlib.sha256(payload).hexdigest()
                stored = kept[id(payload)] = (payload[:cap], len(payload), digest)
            r = q.rejection
            head = (q.received_at, q.topic, r.reason.value, r.detail, r.vin, r.seq, r.signal)
            rows.append((*head, q.tenure, *stored))
        return rows

    # --- retention ----------------------------------------------------------------------

    def _delete_oldest(self, table: str, where: str, params: Sequence[Any], chunk: int) -> int:
        """Delete, in one transaction, those of ``table``'s ``chunk`` oldest rows (by id)
        that match ``where``; the number deleted. Looking only at the oldest rows keeps the
        statement bounded however large the table: ids grow with arrival, so the rows to go
        are at the front."""
        try:
            cursor = self._db.execute(
                f"DELETE FROM {table} WHERE id IN "
                f"(SELECT id FROM {table} ORDER BY id LIMIT ?) AND {where}"
                f"{_KEEP_NEWEST.format(table=table) if table in _LOGS else ''}",
                (chunk, *params),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"prune {table}", exc) from exc
        return cursor.rowcount

    def prune_samples(self, *, received_before: int, chunk: int = 2000) -> int:
        """Delete up to ``chunk`` samples received before ``received_before`` (epoch ms),
        oldest first; the number deleted (less than ``chunk``: nothing older is left).
        Latest values stay: a vehicle's state does not depend on its history."""
        return self._delete_oldest("samples", "received_at < ?", (received_before,), chunk)

    def prune_seq_gaps(self, *, chunk: int = 2000) -> int:
        """Delete up to ``chunk`` telemetry seq-gap rows that lie below every sample still
        stored for their vehicle (retention took the samples around them; a vehicle with no
        sample left loses all its gaps); the number deleted. A gap holds no received number,
        so one that starts below the vehicle's lowest stored seq ends below it too. One
        index seek per vehicle for its lowest seq, then a range of the gaps' primary key:
        the work follows the vehicles and the rows deleted, not the gaps kept. The counts
        (``seq_tracking.missing``, the counters) stay: they are history, like the samples'
        counters."""
        db = self._db
        lowest = (
            "coalesce((SELECT min(s.seq) FROM samples s WHERE s.vehicle_id = t.vehicle_id), "
            "t.last_seq + 1)"
        )
        try:
            # chosen without the write lock (a walk over the vehicles), then deleted in one
            # short write transaction that checks each row again: a late sample committed
            # in between may have lowered its vehicle's lowest seq
            rows = db.execute(
                "SELECT g.vehicle_id, g.start FROM seq_tracking t CROSS JOIN seq_gaps g "
                "ON g.vehicle_id = t.vehicle_id AND g.stream = t.stream "
                f"AND g.start < {lowest} WHERE t.stream = ? LIMIT ?",
                (_TELEMETRY, chunk),
            ).fetchall()
            if not rows:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                deleted = db.executemany(
                    "DELETE FROM seq_gaps WHERE vehicle_id = ? AND stream = ? AND start = ? "
                    f"AND start < (SELECT {lowest} FROM seq_tracking t "
                    "WHERE t.vehicle_id = seq_gaps.vehicle_id AND t.stream = seq_gaps.stream)",
                    [(vehicle, _TELEMETRY, start) for vehicle, start in rows],
                ).rowcount
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError("prune seq_gaps", exc) from exc
        return deleted

    def prune_quarantine(
        self, *, received_before: int | None, max_entries: int | None, chunk: int = 2000
    ) -> int:
        """Delete up to ``chunk`` quarantine entries, oldest first: those received before
        ``received_before``, and beyond ``max_entries`` the oldest of the vehicles that hold
        the most (:meth:`_prune_quarantine_fairly`)."""
        deleted = 0
        if received_before is not None:
            deleted = self._delete_oldest(
                "quarantine", "received_at < ?", (received_before,), chunk
            )
        if max_entries is not None and deleted < chunk:
            (count,) = self._read("SELECT count(*) FROM quarantine")[0]
            excess = min(int(count) - max_entries, chunk - deleted)
            if excess > 0:
                deleted += self._prune_quarantine_fairly(excess)
        return deleted

    def _prune_quarantine_fairly(self, excess: int) -> int:
        """Delete ``excess`` entries from the vehicles that hold the most, oldest first.

        The cap is the installation's, and the entries are every tenant's: deleting the
        oldest of all let one vehicle credential flood its own topics and push every other
        organization's evidence out (outside review 10). A vehicle is the topic's first 29
        characters (``v1/vehicles/`` and the VIN), which the broker binds to the credential
        that published, unlike the payload's ``vin``. The water level is the largest count
        ``level`` with at least ``excess`` entries above it among all vehicles; each vehicle
        keeps its newest ``level``, and of the entries above it the oldest ``excess`` go:
        a flooding vehicle loses its own entries until it holds no more than the others."""
        counts = sorted(
            (int(c) for (c,) in self._read(f"SELECT count(*) FROM quarantine GROUP BY {_HOLDER}")),
            reverse=True,
        )
        low, high = 0, counts[0] if counts else 0
        while low < high:  # the largest level with at least `excess` entries above it
            mid = (low + high + 1) // 2
            if sum(c - mid for c in counts if c > mid) >= excess:
                low = mid
            else:
                high = mid - 1
        # chosen by a read (the window over the table takes ~150 ms at 100,000 entries), then
        # deleted by id in a short write: ingest does not wait for the choice
        ids = [
            int(i)
            for (i,) in self._read(
                "SELECT id FROM (SELECT id, row_number() "
                f"OVER (PARTITION BY {_HOLDER} ORDER BY id DESC) AS newer FROM quarantine) "
                "WHERE newer > ? ORDER BY id LIMIT ?",
                (low, excess),
            )
        ]
        try:
            cursor = self._db.execute(
                "DELETE FROM quarantine WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids).decode(),),
            )
        except sqlite3.Error as exc:
            raise StoreError("prune quarantine", exc) from exc
        return cursor.rowcount

    # --- reading ------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError("read", exc) from exc

    @staticmethod
    def _summary(row: Sequence[Any]) -> VehicleSummary:
        vin, online, first_seen, last_seen, changed, missing_samples, missing_events = row
        return VehicleSummary(
            vin=vin,
            online=None if online is None else bool(online),
            first_seen=first_seen,
            last_seen=last_seen,
            status_changed_at=changed,
            missing_samples=missing_samples,
            missing_events=missing_events,
        )

    def list_vehicles(
        self, *, limit: int, after: str | None = None, vins: Mapping[str, int] | None = None
    ) -> list[VehicleSummary]:
        where, params = _vin_filter(vins)
        if after is not None:
            where, params = f"{where} AND vin > ?", (*params, after)
        rows = self._read(
            f"SELECT vin, online, first_seen, last_seen, status_changed_at, {_MISSING} "
            f"FROM vehicles WHERE {where} ORDER BY vin LIMIT ?",
            (*params, limit),
        )
        return [self._summary(r) for r in rows]

    def map_states(
        self, signals: Sequence[str], *, limit: int, vins: Mapping[str, int] | None = None
    ) -> list[MapState]:
        params: tuple[str, ...] = ()
        if vins is None:
            chosen = f"FROM vehicles WHERE {_NEWEST_TENURE}"
        else:  # driven by the pairs: one index lookup each (twice as fast as IN at 2,000)
            pairs = orjson.dumps(dict(sorted(vins.items()))).decode()
            chosen = (
                "FROM json_each(?) AS w JOIN vehicles "
                "ON vehicles.vin = w.key AND vehicles.tenure = w.value"
            )
            params = (pairs,)
        rows = self._read(
            "SELECT v.vin, v.tenure, v.online, v.last_seen, l.state FROM "
            "(SELECT vehicles.id, vehicles.vin, vehicles.tenure, vehicles.online, "
            f"vehicles.last_seen {chosen} ORDER BY vehicles.vin LIMIT ?) AS v "
            "LEFT JOIN latest_state AS l ON l.vehicle_id = v.id ORDER BY v.vin",
            (*params, limit),
        )
        wanted = set(signals)
        heads: dict[str, tuple[int, bool | None, int]] = {}
        latest: dict[str, dict[str, tuple[SignalValue, int]]] = {}
        for vin, tenure, online, last_seen, state in rows:
            heads[vin] = (tenure, None if online is None else bool(online), last_seen)
            values = packing.read_state(state) if state is not None else {}
            latest[vin] = {k: v for k, v in values.items() if k in wanted}
        return [MapState(vin, *head, latest[vin]) for vin, head in heads.items()]

    def vehicle_state(self, vin: str, *, tenure: int) -> VehicleState | None:
        # one statement, not two: it runs for every command's admission (on the API's
        # event loop) and for every vehicle awaiting a confirmation, twice a second
        rows = self._read(
            f"SELECT vin, online, first_seen, last_seen, status_changed_at, {_MISSING}, "
            "(SELECT state FROM latest_state WHERE vehicle_id = vehicles.id) "
            "FROM vehicles WHERE vin = ? AND tenure = ?",
            (vin, tenure),
        )
        if not rows:
            return None
        summary = self._summary(rows[0][:7])
        state = rows[0][7]
        latest = dict(sorted(packing.read_state(state).items())) if state is not None else {}
        return VehicleState(summary, latest)

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
        """Samples of ``vin`` in its holding period ``tenure`` with ``start <= ts < end``
        that carry at least one of ``signals``, oldest first (by ts, then seq), at most
        ``limit``; ``after``: only those after this (ts, seq), the last point of the
        previous page. Looks at about ``scan`` samples at most: a signal the vehicle rarely
        sends ends the page early with ``resume`` (security review 5: reading it scanned
        every sample in the window, 0.12-0.19 s of CPU at 1,000,000 samples)."""
        if not signals or limit <= 0:
            return HistoryPage()
        wanted = packing.mask_of(signals)
        points = HistoryPage()
        window = (
            "FROM samples "
            "WHERE vehicle_id = (SELECT id FROM vehicles WHERE vin = ? AND tenure = ?) "
            "AND ts >= ? AND ts < ? {following}ORDER BY ts, seq"
        )
        scanned = 0
        # SQLite skips the rows whose mask has none of the signals (rows written before
        # schema 5 have none: JSON, looked at here) among the next ``budget`` rows of the
        # window, so a rarely sent signal costs at most ``scan`` rows; a signal without an
        # id shares bit 63, so the exact test is the values themselves
        while len(points) < limit:
            if scanned >= scan:
                points.resume = after
                break
            following, position = "", cast(tuple[int, ...], ())
            if after is not None:
                following, position = "AND (ts, seq) > (?, ?) ", after
            budget, chunk = scan - scanned, limit - len(points)
            # the index range starts at the cursor's ts, not at ``start`` (SQLite uses one
            # lower bound: with both, a later page walked the window from its start again)
            low = start if after is None else max(start, after[0])
            where = (vin, tenure, low, end, *position)
            rows = self._read(  # the blobs of the matching rows only, by row id
                "SELECT w.seq, w.ts, s.signals FROM (SELECT id, seq, ts, mask "
                f"{window.format(following=following)} LIMIT ?) AS w "
                "CROSS JOIN samples AS s ON s.id = w.id "
                "WHERE w.mask IS NULL OR w.mask & ? != 0 LIMIT ?",
                (*where, budget, wanted, chunk),
            )
            scanned += budget
            for seq, ts, blob in rows:
                values = packing.unpack_any(blob)
                kept = {s: values[s] for s in signals if s in values}
                if kept:
                    points.append(HistoryPoint(seq, ts, kept))
            if len(rows) == chunk:
                after = (rows[-1][1], rows[-1][0])
                continue
            # fewer: the window or the budget ran out; where the budget ended, if it did
            last = self._read(
                f"SELECT ts, seq {window.format(following=following)} LIMIT 1 OFFSET ?",
                (*where, budget - 1),
            )
            if not last:
                break
            after = (last[0][0], last[0][1])
        return points

    def quarantine(
        self,
        *,
        limit: int,
        reason: str | None = None,
        vin: str | None = None,
        before_id: int | None = None,
        vins: Mapping[str, int] | None = None,
    ) -> list[StoredQuarantine]:
        """Newest first; page with ``before_id`` = the smallest id of the previous page;
        ``vins``: only entries about these (vin, tenure) pairs (one JSON parameter)."""
        where: list[str] = []
        params: list[object] = []
        if vins is not None:
            where.append("(vin, tenure) IN (SELECT key, value FROM json_each(?))")
            params.append(orjson.dumps(dict(sorted(vins.items()))).decode())
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if vin is not None:
            where.append("vin = ?")
            params.append(vin)
        if before_id is not None:
            where.append("id < ?")
            params.append(before_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            "SELECT id, received_at, topic, reason, detail, vin, seq, signal, payload, "
            "payload_size, payload_sha256, tenure "
            f"FROM quarantine {clause} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [_stored_quarantine(r) for r in rows]

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        rows = self._read(
            "SELECT s.id, v.vin, v.tenure, s.seq, s.ts, s.received_at, s.signals "
            "FROM samples s JOIN vehicles v ON v.id = s.vehicle_id "
            "WHERE s.id > ? ORDER BY s.id LIMIT ?",
            (cursor, limit),
        )
        return [
            LoggedSample(i, vin, tenure, seq, ts, at, packing.unpack_any(blob))
            for i, vin, tenure, seq, ts, at, blob in rows
        ]

    def events_after(
        self, cursor: int, *, limit: int, vin: str | None = None, tenure: int | None = None
    ) -> list[LoggedEvent]:
        where, params = "e.id > ?", cast(tuple[Any, ...], (cursor,))
        if vin is not None:
            where += " AND v.vin = ? AND v.tenure = ?"
            params += (vin, tenure if tenure is not None else FIRST_TENURE)
        rows = self._read(
            "SELECT e.id, v.vin, v.tenure, e.seq, e.ts, e.received_at, e.type, e.code, "
            "e.detail FROM events e JOIN vehicles v ON v.id = e.vehicle_id "
            f"WHERE {where} ORDER BY e.id LIMIT ?",
            (*params, limit),
        )
        return [LoggedEvent(*r) for r in rows]

    def vehicle_samples(
        self, vin: str, *, tenure: int, start: int, end: int, limit: int
    ) -> list[LoggedSample]:
        rows = self._read(
            "SELECT id, seq, ts, received_at, signals FROM samples "
            "WHERE vehicle_id = (SELECT id FROM vehicles WHERE vin = ? AND tenure = ?) "
            "AND ts >= ? AND ts < ? ORDER BY ts, seq LIMIT ?",
            (vin, tenure, start, end, limit),
        )
        return [
            LoggedSample(i, vin, tenure, seq, ts, at, packing.unpack_any(blob))
            for i, seq, ts, at, blob in rows
        ]

    def counters(self) -> dict[tuple[str, str], float]:
        return {(n, label): v for n, label, v in self._read("SELECT * FROM counters")}

    def vehicle_counts(
        self, vins: Mapping[str, int] | None = None, *, heard_since: int | None = None
    ) -> tuple[int, int]:
        """(vehicles known, vehicles whose last status is online and, with ``heard_since``,
        that were heard from at or after it), from one snapshot."""
        where, params = _vin_filter(vins)
        fresh = "" if heard_since is None else f" AND last_seen >= {int(heard_since)}"
        ((total, online),) = self._read(
            f"SELECT count(*), coalesce(sum(online = 1{fresh}), 0) FROM vehicles WHERE {where}",
            params,
        )
        return int(total), int(online)

    def close(self) -> None:
        self._db.close()


class _BatchRows:
    """The vehicle row of each VIN in one batch, looked up (or created) once per batch."""

    def __init__(self, store: SqliteTelemetryStore, batch: IngestBatch) -> None:
        self._store = store
        self._tenures = batch.tenures
        self._received_at = batch.received_at
        self._current: dict[str, int] = {}

    def current(self, vin: str, at: int, *, heard: bool = True) -> int:
        """The row of the VIN's current tenure; ``heard``: see ``_vehicle_id``."""
        v = self._current.get(vin)
        if v is None:
            tenure = self._tenures.get(vin)
            number = FIRST_TENURE if tenure is None else tenure.number
            v = self._current[vin] = self._store._vehicle_id(vin, number, at, heard=heard)
        return v

    def at(self, vin: str, ts: int) -> int:
        """The row of the tenure a sample or event taken at ``ts`` belongs to: the current
        one, or (taken before it started: an earlier holder's unit, delivered late) the one
        before (``Tenure.of``)."""
        tenure = self._tenures.get(vin)
        if tenure is None or ts >= tenure.started_at:
            return self.current(vin, self._received_at)
        return self._store._vehicle_id(vin, tenure.of(ts), self._received_at)


def _stored_quarantine(row: Sequence[Any]) -> StoredQuarantine:
    id_, received_at, topic, reason, detail, vin, seq, signal, payload, size, digest, tenure = row
    if size is None:  # written before schema version 2, when the whole payload was kept
        size, digest = len(payload), hashlib.sha256(payload).hexdigest()
    return StoredQuarantine(
        id_, received_at, topic, reason, detail, vin, seq, signal, payload, size, digest, tenure
    )


def _pack_latest(db: sqlite3.Connection) -> None:
    """Version 4 -> 5: the ``latest`` rows (one per vehicle and signal, values as JSON)
    become one ``latest_state`` row per vehicle; then ``latest`` goes."""
    states: dict[int, dict[str, tuple[Any, int]]] = {}
    for vehicle, signal, value, ts in db.execute(
        "SELECT vehicle_id, signal, value, ts FROM latest"
    ):
        states.setdefault(vehicle, {})[signal] = (orjson.loads(value), ts)
    db.executemany(
        "INSERT INTO latest_state (vehicle_id, state) VALUES (?, ?)",
        [(v, packing.merge_state(None, state)) for v, state in states.items()],
    )
    db.execute("DROP TABLE latest")


def _run_script(db: sqlite3.Connection, script: str) -> None:
    """Run the ``;``-separated statements of ``script`` in the open transaction
    (``executescript`` would commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _vin_filter(vins: Mapping[str, int] | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE condition limiting ``vehicles`` to the (vin, tenure) pairs of ``vins``: one
    JSON object parameter, so a fleet of thousands is one bound value, not thousands of
    placeholders; None: every VIN at its newest tenure."""
    if vins is None:
        return _NEWEST_TENURE, ()
    pairs = orjson.dumps(dict(sorted(vins.items()))).decode()
    return "(vin, tenure) IN (SELECT key, value FROM json_each(?))", (pairs,)
