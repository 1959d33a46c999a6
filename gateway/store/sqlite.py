"""The embedded telemetry store: one SQLite database file in the data directory.

Why SQLite by default: no server to install, transactional (a batch and its
acknowledgement are all-or-nothing), and fast enough for a single site when written in
large transactions (see docs/decisions/0003-sqlite-embedded-store.md for the figures).

Schema (``PRAGMA user_version`` tracks it):

* ``vehicles``: one row per VIN, with an integer id used as the key everywhere else, the
  online flag and first/last-seen times;
* ``samples``: ``(vehicle_id, seq)`` is unique, which is what makes redelivered messages
  harmless (``INSERT OR IGNORE``); the signals of a sample are one JSON object; an index on
  ``(vehicle_id, ts)`` serves history queries. Rows live in a rowid table, appended in
  arrival order, so the two indexes carry only small keys: twice as fast to insert as a
  ``WITHOUT ROWID`` table keyed on (vehicle_id, seq) with the same second index;
* ``latest``: one row per (vehicle, signal) with the newest value by sample time, so a
  late store-and-forward batch never overwrites fresher values;
* ``events``: vehicle-side events, deduplicated on ``(vehicle_id, seq)``;
* ``quarantine``: everything refused, with reason, topic and raw payload;
* ``counters``: ingest counters, incremented in the same transaction as the data they count.

Durability: WAL journal with ``synchronous=FULL`` by default, so a committed (and therefore
acknowledged) batch survives a power cut, not just a process crash; each commit costs one
fsync, which the batching amortises.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway import metrics
from gateway.errors import StoreError
from gateway.files import private_sqlite_file
from gateway.store.base import (
    CommitResult,
    HistoryPoint,
    IngestBatch,
    StoredQuarantine,
    VehicleState,
    VehicleSummary,
)
from schemas import SignalValue, StatusState

__all__ = ["SCHEMA_VERSION", "SqliteTelemetryStore"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vehicles (
    id INTEGER PRIMARY KEY,
    vin TEXT NOT NULL UNIQUE,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    online INTEGER,
    status_changed_at INTEGER
);
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
    payload BLOB NOT NULL
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
        self._vehicle_ids: dict[str, int] = {}
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
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                "open the database",
                RuntimeError(
                    f"{self.path} has schema version {version}, newer than this gateway's "
                    f"{SCHEMA_VERSION}; upgrade the gateway"
                ),
            )
        self._db.executescript(
            f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )

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

    def _vehicle_id(self, vin: str, at: int) -> int:
        vid = self._vehicle_ids.get(vin)
        if vid is None:
            row = self._db.execute(
                "INSERT INTO vehicles (vin, first_seen, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (vin) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen) "
                "RETURNING id",
                (vin, at, at),
            ).fetchone()
            vid = self._vehicle_ids[vin] = int(row[0])
        return vid

    def _write(self, batch: IngestBatch) -> CommitResult:
        db = self._db
        at = batch.received_at
        vid = self._vehicle_id
        for vin, seen in batch.seen.items():
            db.execute(
                "UPDATE vehicles SET last_seen = max(last_seen, ?) WHERE id = ?",
                (seen, vid(vin, seen)),
            )

        before = db.total_changes
        dumps = orjson.dumps
        db.executemany(
            "INSERT OR IGNORE INTO samples (vehicle_id, seq, ts, received_at, signals) "
            "VALUES (?, ?, ?, ?, ?)",
            [(vid(s.vin, at), s.seq, s.ts, at, dumps(s.signals)) for s in batch.samples],
        )
        samples_stored = db.total_changes - before

        newest: dict[tuple[int, str], tuple[int, SignalValue]] = {}
        for s in batch.samples:
            v = vid(s.vin, at)
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

        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO events (vehicle_id, seq, ts, received_at, type, code, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (vid(e.vin, at), e.seq, e.ts, at, e.type.value, e.code, e.detail)
                for e in batch.events
            ],
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
            "(received_at, topic, reason, detail, vin, seq, signal, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        self, *, limit: int, offset: int, vins: Collection[str] | None = None
    ) -> list[VehicleSummary]:
        where, params = _vin_filter(vins)
        rows = self._read(
            "SELECT vin, online, first_seen, last_seen, status_changed_at FROM vehicles "
            f"{where} ORDER BY vin LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [self._summary(r) for r in rows]

    def vehicle_state(self, vin: str) -> VehicleState | None:
        rows = self._read(
            "SELECT vin, online, first_seen, last_seen, status_changed_at, id FROM vehicles "
            "WHERE vin = ?",
            (vin,),
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
        self, vin: str, signals: Sequence[str], *, start: int, end: int, limit: int
    ) -> list[HistoryPoint]:
        """Samples of ``vin`` with ``start <= ts < end`` that carry at least one of
        ``signals``, oldest first, at most ``limit``."""
        if not signals:
            return []
        present = " OR ".join("json_type(signals, ?) IS NOT NULL" for _ in signals)
        json_paths = [f'$."{s}"' for s in signals]
        rows = self._read(
            "SELECT seq, ts, signals FROM samples "
            "WHERE vehicle_id = (SELECT id FROM vehicles WHERE vin = ?) "
            f"AND ts >= ? AND ts < ? AND ({present}) ORDER BY ts, seq LIMIT ?",
            (vin, start, end, *json_paths, limit),
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
            "SELECT id, received_at, topic, reason, detail, vin, seq, signal, payload "
            f"FROM quarantine {clause} ORDER BY id DESC LIMIT ?",
            (*params, limit),
        )
        return [StoredQuarantine(*r) for r in rows]

    def counters(self) -> dict[tuple[str, str], float]:
        return {(n, label): v for n, label, v in self._read("SELECT * FROM counters")}

    def vehicle_counts(self, vins: Collection[str] | None = None) -> tuple[int, int]:
        """(vehicles known, vehicles whose last status is online), from one snapshot."""
        where, params = _vin_filter(vins)
        ((total, online),) = self._read(
            f"SELECT count(*), coalesce(sum(online = 1), 0) FROM vehicles {where}", params
        )
        return int(total), int(online)

    def close(self) -> None:
        self._db.close()


def _vin_filter(vins: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause limiting ``vehicles`` to ``vins``: one JSON array parameter, so a
    fleet of thousands is one bound value, not thousands of placeholders."""
    if vins is None:
        return "", ()
    return "WHERE vin IN (SELECT value FROM json_each(?))", (orjson.dumps(sorted(vins)).decode(),)
