"""The InfluxDB telemetry store: samples in InfluxDB, spooled on local disk first.

Selected by ``open_store("influxdb://[user:password@]host:port/database?...")``
(``influxdbs://`` for HTTPS). It speaks only InfluxDB's v1 HTTP API, ``/write`` with line
protocol and ``/query`` with InfluxQL, which 1.x serves natively, 2.x through a DBRP
mapping and 3.x through its v1 compatibility. Query parameters: ``token`` (2.x/3.x, sent
as ``Authorization: Token``; or the environment's ``TELEMATICS_INFLUXDB_TOKEN``), ``rp``
(retention policy), ``index`` (the local index file, default
``influx-index-<database>.db`` in the working directory), ``spool_max`` (samples),
``timeout`` (seconds), ``retention`` (the raw data's, e.g. ``30d``), ``rollup`` (``0``:
no 1-minute rollup) and ``shipper`` (``thread``, or ``process``: the spool shipped by a
child process, ``gateway.store.influx_ship``).
See docs/decisions/0015-influxdb-store.md for the why of each choice.

Where each thing lives:

* the time series (every sample, ``gateway.store.lineprotocol`` has the point schema):
  InfluxDB, which several gateway hosts can share and Grafana reads;
* everything that needs a transaction or a fast point lookup: vehicles and their
  tenures, latest state, events, status, quarantine, counters, seq tracking and the
  (VIN, tenure, seq) keys that make a redelivered sample a duplicate: the *local index*,
  an embedded SQLite store (``gateway.store.sqlite``) next to the gateway;
* the spool: samples committed to the index and not yet in InfluxDB. A batch is
  acknowledged once the index has committed it (an fsync on local disk), whether or not
  InfluxDB is up; :class:`Shipper`'s thread then writes the spool to InfluxDB oldest
  first and moves a watermark past what InfluxDB accepted (a history read waits briefly
  for the watermark to pass what was committed before it, so it reads its writes). A
  crash between the write and the watermark rewrites the same points, which land on
  themselves. The spool is bounded (``spool_max``): when it is full a commit fails with
  :class:`StoreError`, so ingest stops acknowledging and the broker holds the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import orjson

from gateway import metrics
from gateway.errors import ConfigurationError, StoreError
from gateway.store import lineprotocol as lp
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
    Tenure,
    VehicleState,
    VehicleSummary,
)
from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES, SqliteTelemetryStore, Synchronous

__all__ = [
    "DEFAULT_SPOOL_MAX",
    "InfluxSettings",
    "InfluxTelemetryStore",
    "Shipper",
    "parse_influx_url",
    "settings_from_json",
    "settings_to_json",
]

log = logging.getLogger(__name__)

SCHEMES = ("influxdb", "influxdbs")
SHIPPER_MODES = ("thread", "process")
TOKEN_ENV = "TELEMATICS_INFLUXDB_TOKEN"
#: samples the spool may hold before commits are refused (a few hours of a large fleet)
DEFAULT_SPOOL_MAX = 5_000_000
#: samples written to InfluxDB per request (its docs advise 5,000 to 10,000 points)
SHIP_CHUNK = 5000
#: a request costs about a millisecond of CPU in the gateway and another in InfluxDB,
#: whatever its size: so a shipper woken with less than a chunk waiting lets it grow this
#: long first (decision 0033)
SHIP_LINGER_S = 0.1
#: after a failed write, the shipper waits this long before trying again
RETRY_S = 1.0
#: a history read waits at most this long for what was committed before it to reach
#: InfluxDB (the shipper takes milliseconds while InfluxDB is up)
READ_WAIT_S = 2.0


#: the rollup's query: every numeric field's mean per minute and series
ROLLUP_SELECT = "SELECT mean(*) INTO {into} FROM {source} GROUP BY time(1m), *"


@dataclass(frozen=True, slots=True)
class InfluxSettings:
    base_url: str
    database: str
    index: Path
    username: str | None = None
    password: str | None = None
    token: str | None = None
    retention_policy: str | None = None
    spool_max: int = DEFAULT_SPOOL_MAX
    timeout_s: float = 10.0
    #: the raw data's retention (an InfluxQL duration such as ``30d``); None: as it is
    retention: str | None = None
    #: keep 1-minute means of every numeric signal (a continuous query, 1.x)
    rollup: bool = True
    #: where the spool is shipped from: a thread of the writing process, or a child
    #: process of its own (``gateway.store.influx_ship``), which does not share the
    #: writer's interpreter lock (decision 0020)
    shipper: str = "thread"


def parse_influx_url(url: str) -> InfluxSettings:
    """The settings an ``influxdb://`` or ``influxdbs://`` URL names."""
    parts = urlsplit(url)
    database = parts.path.strip("/")
    if parts.scheme not in SCHEMES or not parts.hostname or not database or "/" in database:
        raise ConfigurationError(
            f"invalid InfluxDB store URL {url!r}: expected "
            "influxdb://[user:password@]host:port/database[?token=...&rp=...&index=PATH]"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    known = {"token", "rp", "index", "spool_max", "timeout", "retention", "rollup", "shipper"}
    if unknown := sorted(set(query) - known):
        raise ConfigurationError(f"unknown InfluxDB store URL parameters: {', '.join(unknown)}")
    http = "https" if parts.scheme == "influxdbs" else "http"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port or 8086
    return InfluxSettings(
        base_url=f"{http}://{host}:{port}",
        database=database,
        index=Path(query.get("index") or f"influx-index-{database}.db"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        token=query.get("token") or os.environ.get(TOKEN_ENV) or None,
        retention_policy=query.get("rp"),
        spool_max=int(query.get("spool_max", DEFAULT_SPOOL_MAX)),
        timeout_s=float(query.get("timeout", 10.0)),
        retention=_duration(query.get("retention")),
        rollup=query.get("rollup", "1") not in ("0", "false", "no", "off"),
        shipper=_shipper_mode(query.get("shipper", "thread")),
    )


def _shipper_mode(text: str) -> str:
    if text in SHIPPER_MODES:
        return text
    raise ConfigurationError(f"invalid InfluxDB shipper {text!r}: thread or process")


def _duration(text: str | None) -> str | None:
    if text is None or re.fullmatch(r"[1-9][0-9]*[hdw]|INF", text):
        return text
    raise ConfigurationError(
        f"invalid InfluxDB retention {text!r}: a duration such as 720h, 30d, 52w or INF"
    )


class InfluxHttp:
    """The two v1 endpoints, with the URL's credentials; errors are :class:`StoreError`."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        headers = {"Authorization": f"Token {settings.token}"} if settings.token else {}
        auth = (
            (settings.username, settings.password or "")
            if settings.username and not settings.token
            else None
        )
        self._client = httpx.Client(
            base_url=settings.base_url, headers=headers, auth=auth, timeout=settings.timeout_s
        )

    def _params(self, **extra: str) -> dict[str, str]:
        params = {"db": self.settings.database, **extra}
        if self.settings.retention_policy:
            params["rp"] = self.settings.retention_policy
        return params

    def write(self, body: bytes) -> int:
        """Write line protocol (nanosecond timestamps); creates the database (1.x) once if
        InfluxDB says it does not exist. Returns how many points InfluxDB refused for
        good (400: a partial write, e.g. points older than the retention policy or a
        field type conflict; it kept the others): sending them again cannot help, and a
        spool that retried them would never move again. Anything else that fails
        (unreachable, 5xx, auth) raises, and the spool keeps the points."""
        for attempt in (1, 2):
            try:
                response = self._client.post("/write", params=self._params(), content=body)
            except httpx.HTTPError as exc:
                raise StoreError("write to InfluxDB", exc) from exc
            if response.status_code == 204:
                return 0
            if attempt == 1 and response.status_code == 404 and "database" in response.text:
                self.create_database()
                continue
            if response.status_code == 400:
                dropped = re.search(r"dropped=(\d+)", response.text)
                log.error("InfluxDB refused points for good: %s", response.text.strip())
                return int(dropped.group(1)) if dropped else body.count(b"\n") + 1
            break
        raise StoreError("write to InfluxDB", RuntimeError(response.text.strip()))

    def query(self, statement: str, *, post: bool = False) -> list[dict[str, Any]]:
        """Run InfluxQL; the ``results`` (each with its ``series``), epoch nanoseconds."""
        params = self._params(epoch="ns")
        try:
            if post:
                response = self._client.post("/query", params=params, data={"q": statement})
            else:
                response = self._client.get("/query", params={**params, "q": statement})
        except httpx.HTTPError as exc:
            raise StoreError("query InfluxDB", exc) from exc
        body = orjson.loads(response.content) if response.content else {}
        error = body.get("error") or next(
            (r["error"] for r in body.get("results", []) if "error" in r), None
        )
        if response.status_code != 200 or error:
            raise StoreError("query InfluxDB", RuntimeError(error or response.text.strip()))
        results: list[dict[str, Any]] = body.get("results", [])
        return results

    def create_database(self) -> None:
        """``CREATE DATABASE`` (1.x; idempotent there). 2.x and 3.x refuse it: there the
        bucket and its DBRP mapping are made by the operator."""
        self.query(f"CREATE DATABASE {lp.quote_ident(self.settings.database)}", post=True)

    def configure_retention(self) -> None:
        """Retention and rollups, set up by a writer at startup (1.x; idempotent): the
        raw data's retention policy gets ``retention``; with ``rollup``, a continuous
        query keeps 1-minute means of every numeric field of ``telemetry`` in
        ``telemetry_1m`` under the retention policy ``rollup`` (kept forever), for
        long-range charts. On 2.x and 3.x these statements fail and are only logged: there
        the bucket's retention period and a task do the same (docs/decisions/0015)."""
        s, db = self.settings, lp.quote_ident(self.settings.database)
        raw = lp.quote_ident(s.retention_policy or "autogen")
        statements = []
        if s.retention:
            statements.append(f"ALTER RETENTION POLICY {raw} ON {db} DURATION {s.retention}")
        if s.rollup:
            rollup = ROLLUP_SELECT.format(
                into=f'{db}."rollup"."telemetry_1m"', source=f'{db}.{raw}."telemetry"'
            )
            statements += [
                f'CREATE RETENTION POLICY "rollup" ON {db} DURATION INF REPLICATION 1',
                f'CREATE CONTINUOUS QUERY "telemetry_1m" ON {db} RESAMPLE EVERY 1m FOR 10m '
                f"BEGIN {rollup} END",
            ]
        for statement in statements:
            try:
                self.query(statement, post=True)
            except StoreError as exc:
                log.warning("InfluxDB retention or rollup not configured: %s", exc)

    def close(self) -> None:
        self._client.close()


_OUTBOX = """
CREATE TABLE IF NOT EXISTS influx_outbox (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    shipped INTEGER NOT NULL
);
INSERT OR IGNORE INTO influx_outbox (one, shipped) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS influx_lease (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
INSERT OR IGNORE INTO influx_lease (one, owner, until) VALUES (1, '', 0);
"""
#: counter of the points InfluxDB refused for good (too old for its retention policy, a
#: field type conflict), kept in the index's counters
REFUSED = "telematics_store_refused_samples_total"
#: how long the shipper of one process keeps the right to ship an index's spool without
#: renewing it (every chunk renews it); another process's shipper takes over after that
LEASE_S = 10.0
_PENDING = (
    "SELECT s.id, v.vin, v.tenure, s.seq, s.ts, s.signals FROM samples s "
    "JOIN vehicles v ON v.id = s.vehicle_id WHERE s.id > ? AND s.id < ? ORDER BY s.id LIMIT ?"
)
_NO_ID = 2**63 - 1
#: bytes of line protocol that commits may hand the shipper in memory (decision 0033:
#: ~45,000 of the benchmark's 8-signal samples, ~13,000 full 28-signal reports); while
#: that much waits (InfluxDB down or slow), later samples are read back from the index
HANDOFF_MAX_BYTES = 16 * 2**20


def spool_depth(db: sqlite3.Connection) -> int:
    """Samples in the index not yet written to InfluxDB (ids grow by one per sample, so
    the newest id less the watermark; retention may have taken some: an upper bound)."""
    try:
        ((newest,),) = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchall()
        tables = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'influx_outbox'")
        outbox = bool(tables.fetchall())  # none before a writer has opened the index
        row = db.execute("SELECT shipped FROM influx_outbox").fetchone() if outbox else None
        shipped = row[0] if row else 0  # the table is made a moment before its row
    except sqlite3.Error as exc:
        raise StoreError("read the spool depth", exc) from exc
    return max(0, int(newest) - int(shipped))


class Shipper:
    """Writes the spool to InfluxDB in order from a thread of its own, so the committing
    thread never waits for InfluxDB: while one chunk is on its way the gateway commits
    the next batches. One lock orders every write (and retention's deletes), so points go
    out by index id, which is commit order."""

    def __init__(self, index: Path, http: InfluxHttp, *, thread: bool = True) -> None:
        """``thread=False``: no thread ships from here (a child process does, see
        :class:`_ShipperProcess`); this object then only serves retention's deletes."""
        self.http = http
        self.lock = threading.Lock()
        self.db = sqlite3.connect(index, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 30000")
        # the watermark and the lease need no fsync of their own: after a power loss that
        # takes the newest watermark, the points past the older one are sent again and
        # land on themselves (the samples are fsync'd by the commits)
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(_OUTBOX)
        #: (index ids, line protocol) of committed samples, oldest first (hand_off)
        self._handoffs: deque[tuple[range, bytes]] = deque()
        self._handoff_held = 0  # samples
        self._handoff_bytes = 0
        self._handoff_lock = threading.Lock()
        #: until when this shipper's lease runs (time.time()), as it last wrote it
        self._lease_until = 0.0
        self.retry_at = 0.0
        self.last_error: str | None = None
        self._wake = threading.Event()
        #: with the shipper in a child process: how to wake that instead
        self.notify: Callable[[], None] | None = None
        self._stopping = threading.Event()
        self.owner = f"{os.getpid()}:{id(self)}"
        #: sends the requests, so the shipper prepares the next chunk meanwhile
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="influx-write")
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="influx-shipper", daemon=True)
            self._thread.start()

    def hand_off(self, ids: range, body: bytes) -> None:
        """The line protocol (``body``) of samples just committed to the index with the
        consecutive ids ``ids``, so that the shipper sends it without reading the samples
        back and decoding them (a fifth of the gateway's CPU per sample, decision 0033).
        Only a speed-up: the index stays the spool, and whatever is not handed off (too
        much waiting, another process's commits) is read back from there."""
        with self._handoff_lock:
            if self._handoff_bytes + len(body) <= HANDOFF_MAX_BYTES:
                self._handoffs.append((ids, body))
                self._handoff_held += len(ids)
                self._handoff_bytes += len(body)

    def forget_handoffs(self, *, upto: int) -> int:
        """Drop the hand-offs that start at or below index id ``upto`` (shipped, partly
        shipped by another process, or pruned from the spool); the first id of the oldest
        one left, :data:`_NO_ID` if none."""
        with self._handoff_lock:
            while self._handoffs and self._handoffs[0][0].start <= upto:
                self._drop_first_handoff()
            return self._handoffs[0][0].start if self._handoffs else _NO_ID

    def _drop_first_handoff(self) -> None:
        """(With the hand-off lock held.)"""
        ids, body = self._handoffs.popleft()
        self._handoff_held -= len(ids)
        self._handoff_bytes -= len(body)

    def _take_handoffs(self) -> tuple[int, int, bytes]:
        """(last id, samples, body) of the oldest hand-offs that follow each other without
        a gap, up to about :data:`SHIP_CHUNK` samples."""
        bodies: list[bytes] = []
        count, last = 0, -1
        with self._handoff_lock:
            while self._handoffs and count < SHIP_CHUNK:
                ids, body = self._handoffs[0]
                if bodies and ids.start != last + 1:
                    break
                self._drop_first_handoff()
                bodies.append(body)
                count, last = count + len(ids), ids[-1]
        return last, count, b"\n".join(bodies)

    def _chunk(self, after: int) -> tuple[int, int, bytes]:
        """(last index id, samples, request body) of the oldest spooled samples after index
        id ``after`` (no samples: the spool is empty). Read back from the index up to the
        oldest hand-off; when nothing in the index comes before it, from memory."""
        handoff = self.forget_handoffs(upto=after)
        rows = self.db.execute(_PENDING, (after, handoff, SHIP_CHUNK)).fetchall()
        if rows or handoff == _NO_ID:
            body = lp.lines(
                (vin, tenure, seq, ts, packing.unpack_any(signals))
                for _, vin, tenure, seq, ts, signals in rows
            )
            return (rows[-1][0] if rows else after), len(rows), body
        return self._take_handoffs()

    def _lease(self) -> bool:
        """Take or renew the right to ship this index's spool: one shipper at a time
        when several processes (gateways, the API's command service) open the same
        index, so the same points are not sent twice over. A lease with more than half
        its time left is not written again (nobody can take it before it runs out)."""
        now = time.time()
        if self._lease_until - now > LEASE_S / 2:
            return True
        taken = self.db.execute(
            "UPDATE influx_lease SET owner = ?, until = ? WHERE owner = ? OR until < ?",
            (self.owner, now + LEASE_S, self.owner, now),
        )
        if taken.rowcount == 1:
            self._lease_until = now + LEASE_S
            return True
        self._lease_until = 0.0
        with self._handoff_lock:  # another process ships: what was handed off goes stale
            self._handoffs.clear()
            self._handoff_held = self._handoff_bytes = 0
        return False

    def _confirm(self, write: Future[int], last_id: int) -> None:
        """Wait for a write; once InfluxDB has it, move the watermark past it (and count
        the points it refused for good, ``telematics_store_refused_samples_total``)."""
        refused = write.result()
        # one transaction: whoever sees the watermark move (flush) sees the count too
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if refused:
                self.db.execute(
                    "INSERT INTO counters (name, label, value) VALUES (?, '', ?) "
                    "ON CONFLICT (name, label) DO UPDATE SET value = value + excluded.value",
                    (REFUSED, refused),
                )
            self.db.execute("UPDATE influx_outbox SET shipped = max(shipped, ?)", (last_id,))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        self._lease()
        if self.last_error is not None:
            log.warning("InfluxDB writes resumed; draining the spool")
        self.last_error = None

    def drain(self, max_rows: int) -> int:
        """Ship until the spool is empty or ``max_rows`` went; how many went. Pipelined:
        the next chunk is read and encoded while the previous one is on its way, and the
        watermark moves only past chunks InfluxDB accepted, in order (one in flight). A
        failure backs off; the next drain starts again at the watermark."""
        sent = 0
        with self.lock:
            if not self._lease():
                return 0
            ((cursor,),) = self.db.execute("SELECT shipped FROM influx_outbox").fetchall()
            pending: tuple[Future[int], int, int] | None = None
            try:
                while sent < max_rows and time.monotonic() >= self.retry_at:
                    last, count, body = self._chunk(cursor)
                    if pending is not None:
                        self._confirm(pending[0], pending[1])
                        sent, pending = sent + pending[2], None
                    if not count:
                        break
                    cursor = last
                    pending = (self._writer.submit(self.http.write, body), cursor, count)
                if pending is not None:
                    self._confirm(pending[0], pending[1])
                    sent += pending[2]
            except StoreError as exc:
                if self.last_error is None:
                    log.warning("InfluxDB write failed, spooling locally: %s", exc)
                self.last_error, self.retry_at = str(exc), time.monotonic() + RETRY_S
        return sent

    def wake(self) -> None:
        if self.notify is not None:
            self.notify()
        else:
            self._wake.set()

    def _run(self) -> None:
        backlog = False
        while not self._stopping.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            if not backlog and self._handoff_held < SHIP_CHUNK:
                self._stopping.wait(SHIP_LINGER_S)  # let a small spool grow
            try:
                sent = self.drain(10 * SHIP_CHUNK)
                backlog = sent >= 10 * SHIP_CHUNK
                if sent > 0:
                    self._wake.set()  # there may be more
            except Exception:  # the thread must outlive any one failure
                log.exception("InfluxDB shipper failed; retrying")
                self.retry_at = time.monotonic() + RETRY_S

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._writer.shutdown(wait=True)
        self.db.execute("UPDATE influx_lease SET until = 0 WHERE owner = ?", (self.owner,))
        self.db.close()


def settings_to_json(settings: InfluxSettings) -> bytes:
    return orjson.dumps({**asdict(settings), "index": str(settings.index)})


def settings_from_json(text: bytes) -> InfluxSettings:
    fields = orjson.loads(text)
    return InfluxSettings(**{**fields, "index": Path(fields["index"])})


class _ShipperProcess:
    """The spool shipped by a child process, ``python -m gateway.store.influx_ship``, so
    reading, encoding and sending the spool does not take the writer's interpreter lock
    (the writer process parses MQTT and commits the index meanwhile). Its stdin carries
    the settings (one JSON line: credentials never show in ``ps``), then a byte per
    wake-up; end of file, when this process closes the store or dies, stops it. The
    child ships under the index's lease like any other shipper, so durability and order
    are those of the thread (:class:`Shipper`); a child that died is started again at
    the next wake-up."""

    def __init__(self, settings: InfluxSettings) -> None:
        self._settings = settings
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.store.influx_ship"], stdin=subprocess.PIPE
        )
        assert process.stdin is not None
        process.stdin.write(settings_to_json(self._settings) + b"\n")
        process.stdin.flush()
        os.set_blocking(process.stdin.fileno(), False)
        return process

    def wake(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        if self.process.poll() is not None:
            log.error(
                "the InfluxDB shipper process exited (%s); starting it again",
                self.process.returncode,
            )
            stdin.close()
            self.process = self._start()
            return
        # a full pipe holds wake-ups the child has not read yet: it is awake anyway
        with contextlib.suppress(BlockingIOError):
            os.write(stdin.fileno(), b"w")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _tenure(current: Tenure | None, ts: int) -> int:
    """The holding period the index files a sample taken at ``ts`` under, the VIN's
    current one being ``current`` (the index's ``_BatchRows.at``)."""
    return FIRST_TENURE if current is None else current.of(ts)


class InfluxTelemetryStore:
    """:class:`~gateway.store.base.TelemetryBackend` on InfluxDB plus the local index.

    A writer (``readonly=False``) commits to the index, ships the spool and creates the
    database when it can; a reader reads the index read-only and history from InfluxDB.
    Not thread-safe, like the SQLite store (the shipper's thread is internal)."""

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        readonly: bool = False,
        synchronous: Synchronous = "FULL",
        quarantine_payload_bytes: int = DEFAULT_QUARANTINE_PAYLOAD_BYTES,
    ) -> None:
        self.settings = settings
        self.index = SqliteTelemetryStore(
            settings.index,
            readonly=readonly,
            synchronous=synchronous,
            quarantine_payload_bytes=quarantine_payload_bytes,
        )
        self.http = InfluxHttp(settings)
        self._shipper: Shipper | None = None
        self._child: _ShipperProcess | None = None
        self._spool: sqlite3.Connection | None = None
        if readonly:
            return
        try:
            self.http.create_database()
            self.http.configure_retention()
        except StoreError as exc:  # down (the spool holds what comes), or 2.x/3.x
            log.warning("could not create InfluxDB database %s: %s", settings.database, exc)
        if settings.shipper == "process":
            self._shipper = Shipper(settings.index, self.http, thread=False)
            self._child = _ShipperProcess(settings)
            self._shipper.notify = self._child.wake
        else:
            self._shipper = Shipper(settings.index, self.http)

    def _writer(self) -> Shipper:
        if self._shipper is None:
            raise StoreError("write", RuntimeError("this store was opened read-only"))
        return self._shipper

    # --- writing ------------------------------------------------------------------------

    def commit(self, batch: IngestBatch) -> CommitResult:
        """Commit to the index (durable: the batch may be acknowledged) and wake the
        shipper. Refused while the spool holds ``spool_max`` samples or more."""
        shipper = self._writer()
        if batch.samples:
            depth = self.spool_depth()
            if depth >= self.settings.spool_max:
                raise StoreError(
                    "commit a batch",
                    RuntimeError(
                        f"the InfluxDB spool is full ({depth} samples, limit "
                        f"{self.settings.spool_max}); {shipper.last_error or 'InfluxDB is slow'}"
                    ),
                )
        result = self.index.commit(batch)
        ids = self.index.committed_sample_ids
        if ids is not None and self._child is None:
            tenures = batch.tenures
            shipper.hand_off(
                ids,
                lp.lines(
                    (s.vin, _tenure(tenures.get(s.vin), s.ts), s.seq, s.ts, s.signals)
                    for s in batch.samples
                ),
            )
        shipper.wake()
        return result

    def _spool_db(self) -> sqlite3.Connection:
        """This instance's own connection for spool queries (the shipper's thread has
        another): read-only, so it never waits for the shipper."""
        if self._spool is None:
            self._spool = sqlite3.connect(
                f"file:{self.settings.index}?mode=ro", uri=True, check_same_thread=False
            )
            self._spool.execute("PRAGMA busy_timeout = 30000")
        return self._spool

    def spool_depth(self) -> int:
        """Samples committed locally and not yet in InfluxDB."""
        return spool_depth(self._spool_db())

    def _await_shipped(self, timeout_s: float) -> None:
        """Wait until what was committed before this call is in InfluxDB, for at most
        ``timeout_s`` (while InfluxDB is down, history shows what it has)."""
        db = self._spool_db()
        deadline = time.monotonic() + timeout_s
        try:
            ((target,),) = db.execute("SELECT coalesce(max(id), 0) FROM samples").fetchall()
            while target and time.monotonic() < deadline:
                row = db.execute("SELECT shipped FROM influx_outbox").fetchone()
                if row is None or row[0] >= target:
                    return
                time.sleep(0.005)
        except sqlite3.Error as exc:  # no outbox: no writer has opened the index yet
            log.debug("not waiting for the spool: %s", exc)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until the spool is empty (tests, shutdown); whether it is."""
        shipper = self._writer()
        deadline = time.monotonic() + timeout_s
        while self.spool_depth() > 0:
            if time.monotonic() > deadline:
                return False
            shipper.wake()
            time.sleep(0.02)
        return True

    # --- retention ----------------------------------------------------------------------

    def prune_samples(self, *, received_before: int, chunk: int = 2000) -> int:
        """Delete up to ``chunk`` samples received before ``received_before``, oldest
        first, from InfluxDB (the shipped ones; 1.x ``DELETE``) and then from the index.
        The newest sample stays in the index: SQLite hands out max(id) + 1 as the next id,
        and an emptied table would reuse ids at or below the spool's watermark."""
        shipper = self._writer()
        with shipper.lock:
            db = shipper.db
            ((shipped,),) = db.execute("SELECT shipped FROM influx_outbox").fetchall()
            rows = db.execute(
                "SELECT s.id, v.vin, v.tenure, s.seq, s.ts FROM samples s "
                "JOIN vehicles v ON v.id = s.vehicle_id "
                "WHERE s.id IN (SELECT id FROM samples ORDER BY id LIMIT ?) "
                "AND s.received_at < ? AND s.id < (SELECT max(id) FROM samples)",
                (chunk, received_before),
            ).fetchall()
            statements = [
                f"DELETE FROM {lp.quote_ident(lp.MEASUREMENT)} WHERE "
                f"vin = {lp.quote_string(vin)} AND tenure = {lp.quote_string(str(tenure))} "
                f"AND time = {lp.point_time(ts, seq)}"
                for row_id, vin, tenure, seq, ts in rows
                if row_id <= shipped
            ]
            if statements:
                self.http.query(";".join(statements), post=True)
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM samples WHERE id = ?", [(r[0],) for r in rows])
            db.execute("COMMIT")
            if rows:  # not shipped yet and now gone from the spool: not from memory either
                shipper.forget_handoffs(upto=max(r[0] for r in rows))
        return len(rows)

    def prune_seq_gaps(self, *, chunk: int = 2000) -> int:
        """The index keeps the seq gaps and the samples' seq numbers: its rule applies."""
        return self.index.prune_seq_gaps(chunk=chunk)

    def prune_quarantine(
        self, *, received_before: int | None, max_entries: int | None, chunk: int = 2000
    ) -> int:
        return self.index.prune_quarantine(
            received_before=received_before, max_entries=max_entries, chunk=chunk
        )

    # --- reading ------------------------------------------------------------------------

    def list_vehicles(
        self, *, limit: int, after: str | None = None, vins: Mapping[str, int] | None = None
    ) -> list[VehicleSummary]:
        return self.index.list_vehicles(limit=limit, after=after, vins=vins)

    def vehicle_state(self, vin: str, *, tenure: int) -> VehicleState | None:
        return self.index.vehicle_state(vin, tenure=tenure)

    def map_states(
        self, signals: Sequence[str], *, limit: int, vins: Mapping[str, int] | None = None
    ) -> list[MapState]:
        return self.index.map_states(signals, limit=limit, vins=vins)

    # the committed log (the fleet rules worker reads it): the index keeps every sample
    # until retention prunes it, shipped or not, with the row ids the cursor needs

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        return self.index.samples_after(cursor, limit=limit)

    def events_after(
        self, cursor: int, *, limit: int, vin: str | None = None, tenure: int | None = None
    ) -> list[LoggedEvent]:
        return self.index.events_after(cursor, limit=limit, vin=vin, tenure=tenure)

    def vehicle_samples(
        self, vin: str, *, tenure: int, start: int, end: int, limit: int
    ) -> list[LoggedSample]:
        return self.index.vehicle_samples(vin, tenure=tenure, start=start, end=end, limit=limit)

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
        """From InfluxDB, oldest first: the points of (vin, tenure) in [start, end) that
        carry one of ``signals``. The query asks for ``seq`` too (it is in every point),
        so points without those signals come back and are skipped here, page by page, up
        to about ``scan`` points read: then the page ends early with ``resume``."""
        if not signals or limit <= 0:
            return HistoryPage()
        self._await_shipped(READ_WAIT_S)
        columns = ", ".join(lp.quote_ident(s) for s in ("seq", *signals))
        where = (
            f"vin = {lp.quote_string(vin)} AND tenure = {lp.quote_string(str(tenure))} "
            f"AND time >= {lp.point_time(start, 0)} AND time < {lp.point_time(end, 0)}"
        )
        cursor = None if after is None else lp.point_time(*after)
        points: list[HistoryPoint] = []
        page = max(1, min(max(limit, 500), scan))
        scanned = 0
        last: list[Any] | None = None
        while len(points) < limit:
            if scanned >= scan and last is not None:
                return HistoryPage(points, resume=(lp.split_point_time(last[0]), int(last[1])))
            following = "" if cursor is None else f" AND time > {cursor}"
            rows = self._rows(
                f"SELECT {columns} FROM {lp.quote_ident(lp.MEASUREMENT)} "
                f"WHERE {where}{following} ORDER BY time ASC LIMIT {page}"
            )
            scanned += len(rows)
            for row in rows:
                values = {
                    s: lp.decode_value(s, v)
                    for s, v in zip(signals, row[2:], strict=True)
                    if v is not None
                }
                if values:
                    points.append(HistoryPoint(int(row[1]), lp.split_point_time(row[0]), values))
            if len(rows) < page:
                break
            last = rows[-1]
            cursor = last[0]
        return HistoryPage(points[:limit])

    def _rows(self, statement: str) -> list[list[Any]]:
        rows: list[list[Any]] = []
        for result in self.http.query(statement):
            for series in result.get("series", []):
                rows.extend(series["values"])
        return rows

    def quarantine(
        self,
        *,
        limit: int,
        reason: str | None = None,
        vin: str | None = None,
        before_id: int | None = None,
        vins: Mapping[str, int] | None = None,
    ) -> list[StoredQuarantine]:
        return self.index.quarantine(
            limit=limit, reason=reason, vin=vin, before_id=before_id, vins=vins
        )

    def counters(self) -> dict[tuple[str, str], float]:
        """The index's counters and the spool's gauges (``gateway.metrics``)."""
        counts = self.index.counters()
        counts[(metrics.SPOOL_SAMPLES, "")] = float(self.spool_depth())
        counts[(metrics.SPOOL_LIMIT, "")] = float(self.settings.spool_max)
        return counts

    def vehicle_counts(
        self, vins: Mapping[str, int] | None = None, *, heard_since: int | None = None
    ) -> tuple[int, int]:
        return self.index.vehicle_counts(vins, heard_since=heard_since)

    def close(self) -> None:
        """Stop the shipper (what it has not sent stays spooled); closing twice is fine."""
        child, self._child = self._child, None
        if child is not None:  # first: it finishes its chunk and gives the lease up
            child.close()
        shipper, self._shipper = self._shipper, None
        if shipper is not None:
            shipper.close()
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
        self.http.close()
        self.index.close()
