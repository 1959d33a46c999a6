"""The embedded telemetry store: one SQLite database file in the data directory.

Why SQLite by default: no server to install, transactional (a batch and its
acknowledgement are all-or-nothing), and fast enough for a single site when written in
large transactions (see docs/decisions/0003-sqlite-embedded-store.md for the figures).

Schema (``PRAGMA user_version`` tracks it; :data:`SCHEMA_VERSION`):

* ``vehicles``: one row per (VIN, tenure), the tenure being the VIN's holding period (see
  ``gateway.store.base``), with an integer id used as the key everywhere else, the online
  flag and first/last-seen times. Keying the row by tenure is what separates holders:
  samples, latest state, events and status hang off the row's id, so a new holder's
  vehicle starts empty and its seq 1, 2, ... are new samples, not duplicates of the
  previous holder's;
* ``samples``: ``(vehicle_id, seq)`` is unique, which is what makes redelivered messages
  harmless (``INSERT OR IGNORE``); the signals of a sample are one JSON object; an index on
  ``(vehicle_id, ts)`` serves history queries. Rows live in a rowid table, appended in
  arrival order, so the two indexes carry only small keys: twice as fast to insert as a
  ``WITHOUT ROWID`` table keyed on (vehicle_id, seq) with the same second index;
* ``latest``: one row per (vehicle, signal) with the newest value by sample time, so a
  late store-and-forward batch never overwrites fresher values;
* ``events``: vehicle-side events, deduplicated on ``(vehicle_id, seq)``;
* ``quarantine``: everything refused, with reason, topic, raw payload and the tenure of the
  vehicle it concerns when the gateway knew it;
* ``counters``: ingest counters, incremented in the same transaction as the data they count.

Schema history: version 1 keyed ``vehicles`` by VIN alone; version 2 (ownership periods)
keys it by (VIN, tenure) and adds ``quarantine.tenure``. Opening a version 1 file as a
writer upgrades it in one transaction: its rows become tenure 1 (the VIN's holder at the
time of the upgrade; data from before cannot be told apart by holder).

Durability: WAL journal with ``synchronous=FULL`` by default, so a committed (and therefore
acknowledged) batch survives a power cut, not just a process crash; each commit costs one
fsync, which the batching amortises.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway import metrics
from gateway.errors import StoreError
from gateway.store.base import (
    FIRST_TENURE,
    CommitResult,
    HistoryPoint,
    IngestBatch,
    StoredQuarantine,
    VehicleState,
    VehicleSummary,
)
from schemas import SignalValue, StatusState

__all__ = ["SCHEMA_VERSION", "SqliteTelemetryStore"]

SCHEMA_VERSION = 2

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

_SCHEMA = (
    _VEHICLES.format(name="vehicles")
    + """
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    vehicle_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    signals TEXT NOT NULL,
    UNIQUE (vehicle_id, seq)
);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (vehicle_id, ts);
CREATE TABLE IF NOT EXISTS latest (
    vehicle_id INTEGER NOT NULL,
    signal TEXT NOT NULL,
    value TEXT NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, signal)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    vehicle_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    type TEXT NOT NULL,
    code TEXT,
    detail TEXT,
    PRIMARY KEY (vehicle_id, seq)
) WITHOUT ROWID;
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
"""
)

#: version 1 -> 2: ``vehicles`` keyed by (vin, tenure) instead of vin (a rebuild: SQLite
#: cannot drop a UNIQUE constraint; the table has one row per vehicle, so it is quick), its
#: ids kept so the samples, latest state and events stay attached; quarantine gets a tenure
_UPGRADE_1_TO_2 = (
    _VEHICLES.format(name="vehicles_v2")
    + """
INSERT INTO vehicles_v2 (id, vin, tenure, first_seen, last_seen, online, status_changed_at)
    SELECT id, vin, 1, first_seen, last_seen, online, status_changed_at FROM vehicles;
DROP TABLE vehicles;
ALTER TABLE vehicles_v2 RENAME TO vehicles;
ALTER TABLE quarantine ADD COLUMN tenure INTEGER;
"""
)

#: the newest row per VIN: no row of the same VIN with a higher tenure (the UNIQUE (vin,
#: tenure) index answers the subquery)
_NEWEST_TENURE = (
    "NOT EXISTS (SELECT 1 FROM vehicles AS newer "
    "WHERE newer.vin = vehicles.vin AND newer.tenure > vehicles.tenure)"
)

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
    ) -> None:
        self.path = path
        self._vehicle_ids: dict[tuple[str, int], int] = {}
        try:
            if readonly:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
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
            if version == 1:
                _run_script(db, _UPGRADE_1_TO_2)
            if version < SCHEMA_VERSION:
                _run_script(db, _SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- writing ------------------------------------------------------------------------

    def commit(self, batch: IngestBatch) -> CommitResult:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = self._write(batch)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # ids handed out inside the failed transaction may not exist
            self._vehicle_ids.clear()
            raise StoreError("commit a batch", exc) from exc
        return result

    def _vehicle_id(self, vin: str, tenure: int, at: int) -> int:
        key = (vin, tenure)
        vid = self._vehicle_ids.get(key)
        if vid is None:
            row = self._db.execute(
                "INSERT INTO vehicles (vin, tenure, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (vin, tenure) DO UPDATE "
                "SET last_seen = max(last_seen, excluded.last_seen) RETURNING id",
                (vin, tenure, at, at),
            ).fetchone()
            vid = self._vehicle_ids[key] = int(row[0])
        return vid

    def _write(self, batch: IngestBatch) -> CommitResult:
        db = self._db
        at = batch.received_at
        tenures = batch.tenures
        # the vehicle row of each VIN at its current tenure, looked up once per batch
        current: dict[str, int] = {}

        def vid(vin: str, at: int) -> int:
            v = current.get(vin)
            if v is None:
                tenure = tenures.get(vin)
                number = FIRST_TENURE if tenure is None else tenure.number
                v = current[vin] = self._vehicle_id(vin, number, at)
            return v

        def vid_at(vin: str, ts: int) -> int:
            """The row of the tenure a sample or event taken at ``ts`` belongs to: the
            current one, or (taken before it started: an earlier holder's unit, delivered
            late) the one before (``Tenure.of``)."""
            tenure = tenures.get(vin)
            if tenure is None or ts >= tenure.started_at:
                return vid(vin, at)
            return self._vehicle_id(vin, tenure.of(ts), at)

        for vin, seen in batch.seen.items():
            db.execute(
                "UPDATE vehicles SET last_seen = max(last_seen, ?) WHERE id = ?",
                (seen, vid(vin, seen)),
            )

        dumps = orjson.dumps
        # rows first: looking up a vehicle row may insert it, which must not count as stored
        rows = [(vid_at(s.vin, s.ts), s.seq, s.ts, at, dumps(s.signals)) for s in batch.samples]
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO samples (vehicle_id, seq, ts, received_at, signals) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        samples_stored = db.total_changes - before

        newest: dict[tuple[int, str], tuple[int, SignalValue]] = {}
        for s in batch.samples:
            v = vid_at(s.vin, s.ts)
            for path, value in s.signals.items():
                key = (v, path)
                held = newest.get(key)
                if held is None or s.ts >= held[0]:
                    newest[key] = (s.ts, value)
        db.executemany(
            "INSERT INTO latest (vehicle_id, signal, value, ts) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (vehicle_id, signal) DO UPDATE SET value = excluded.value, "
            "ts = excluded.ts WHERE excluded.ts >= latest.ts",
            [(v, path, dumps(value), ts) for (v, path), (ts, value) in newest.items()],
        )

        event_rows = [
            (vid_at(e.vin, e.ts), e.seq, e.ts, at, e.type.value, e.code, e.detail)
            for e in batch.events
        ]
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO events (vehicle_id, seq, ts, received_at, type, code, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        events_stored = db.total_changes - before

        for change in batch.statuses:
            db.execute(
                "UPDATE vehicles SET online = ?, status_changed_at = ? "
                "WHERE id = ? AND (status_changed_at IS NULL OR status_changed_at <= ?)",
                (
                    int(change.state is StatusState.ONLINE),
                    change.at,
                    vid(change.vin, change.at),
                    change.at,
                ),
            )

        db.executemany(
            "INSERT INTO quarantine "
            "(received_at, topic, reason, detail, vin, seq, signal, payload, tenure) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    q.received_at,
                    q.topic,
                    q.rejection.reason.value,
                    q.rejection.detail,
                    q.rejection.vin,
                    q.rejection.seq,
                    q.rejection.signal,
                    q.payload,
                    q.tenure,
                )
                for q in batch.quarantine
            ],
        )
        result = CommitResult(
            samples_stored=samples_stored,
            sample_duplicates=len(batch.samples) - samples_stored,
            events_stored=events_stored,
            event_duplicates=len(batch.events) - events_stored,
            quarantined=len(batch.quarantine),
        )
        counters = dict(batch.counters)
        for name, delta in (
            (metrics.SAMPLES_STORED, result.samples_stored),
            (metrics.SAMPLES_DUPLICATE, result.sample_duplicates),
            (metrics.EVENTS_STORED, result.events_stored),
            (metrics.EVENTS_DUPLICATE, result.event_duplicates),
        ):
            counters[(name, "")] = counters.get((name, ""), 0) + delta
        db.executemany(
            "INSERT INTO counters (name, label, value) VALUES (?, ?, ?) "
            "ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value",
            [(name, label, delta) for (name, label), delta in counters.items()],
        )
        return result

    # --- reading ------------------------------------------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError("read", exc) from exc

    @staticmethod
    def _summary(row: Sequence[Any]) -> VehicleSummary:
        vin, online, first_seen, last_seen, changed = row
        return VehicleSummary(
            vin=vin,
            online=None if online is None else bool(online),
            first_seen=first_seen,
            last_seen=last_seen,
            status_changed_at=changed,
        )

    def list_vehicles(
        self, *, limit: int, offset: int, vins: Mapping[str, int] | None = None
    ) -> list[VehicleSummary]:
        where, params = _vin_filter(vins)
        rows = self._read(
            "SELECT vin, online, first_seen, last_seen, status_changed_at FROM vehicles "
            f"WHERE {where} ORDER BY vin LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [self._summary(r) for r in rows]

    def vehicle_state(self, vin: str, *, tenure: int) -> VehicleState | None:
        rows = self._read(
            "SELECT vin, online, first_seen, last_seen, status_changed_at, id FROM vehicles "
            "WHERE vin = ? AND tenure = ?",
            (vin, tenure),
        )
        if not rows:
            return None
        summary = self._summary(rows[0][:5])
        latest = {
            signal: (orjson.loads(value), ts)
            for signal, value, ts in self._read(
                "SELECT signal, value, ts FROM latest WHERE vehicle_id = ? ORDER BY signal",
                (rows[0][5],),
            )
        }
        return VehicleState(summary, latest)

    def history(
        self, vin: str, signals: Sequence[str], *, tenure: int, start: int, end: int, limit: int
    ) -> list[HistoryPoint]:
        """Samples of ``vin`` in its holding period ``tenure`` with ``start <= ts < end``
        that carry at least one of ``signals``, oldest first, at most ``limit``."""
        if not signals:
            return []
        present = " OR ".join("json_type(signals, ?) IS NOT NULL" for _ in signals)
        json_paths = [f'$."{s}"' for s in signals]
        rows = self._read(
            "SELECT seq, ts, signals FROM samples "
            "WHERE vehicle_id = (SELECT id FROM vehicles WHERE vin = ? AND tenure = ?) "
            f"AND ts >= ? AND ts < ? AND ({present}) ORDER BY ts, seq LIMIT ?",
            (vin, tenure, start, end, *json_paths, limit),
        )
        points = []
        for seq, ts, blob in rows:
            values = orjson.loads(blob)
            points.append(HistoryPoint(seq, ts, {s: values[s] for s in signals if s in values}))
        return points

    def quarantine(
        self,
        *,
        limit: int,
        reason: str | None = None,
        vin: str | None = None,
        before_id: int | None = None,
    ) -> list[StoredQuarantine]:
        """Newest first; page with ``before_id`` = the smallest id of the previous page."""
        where: list[str] = []
        params: list[object] = []
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
            "SELECT id, received_at, topic, reason, detail, vin, seq, signal, payload, tenure "
            f"FROM quarantine {clause} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [StoredQuarantine(*r) for r in rows]

    def counters(self) -> dict[tuple[str, str], float]:
        return {(n, label): v for n, label, v in self._read("SELECT * FROM counters")}

    def vehicle_counts(self, vins: Mapping[str, int] | None = None) -> tuple[int, int]:
        """(vehicles known, vehicles whose last status is online), from one snapshot."""
        where, params = _vin_filter(vins)
        ((total, online),) = self._read(
            f"SELECT count(*), coalesce(sum(online = 1), 0) FROM vehicles WHERE {where}", params
        )
        return int(total), int(online)

    def close(self) -> None:
        self._db.close()


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
