"""Retention and the quarantine's size cap, on real SQLite files and a real gateway process.

Samples older than the telemetry retention and quarantine entries past their age or count
are deleted by the gateway, oldest first, in bounded chunks; a refused payload is kept up
to a prefix with its whole size and SHA-256; a database written before those columns
existed is upgraded in place.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.broker import MosquittoProcess
from gateway.retention import RetentionPolicy, prune_once
from gateway.store import IngestBatch, QuarantineEntry, open_store
from gateway.store.sqlite import SCHEMA_VERSION
from schemas import Reason, Rejection, Sample
from tests.support.waiting import wait_until

VIN = "WVWZZZ1JZXW000001"
SPEED = "Vehicle.Speed"
DAY_MS = 24 * 3600 * 1000


def _rejection(n: int) -> Rejection:
    return Rejection(Reason.MALFORMED_JSON, f"bad {n}", vin=VIN)


def _seed(path: Path, *, received_at: int, first_seq: int, n: int, quarantined: int = 0) -> None:
    store = open_store(path)
    try:
        store.commit(
            IngestBatch(
                received_at=received_at,
                samples=[
                    Sample(VIN, seq, received_at, {SPEED: float(seq)})
                    for seq in range(first_seq, first_seq + n)
                ],
                quarantine=[
                    QuarantineEntry(received_at, "t", b"x", _rejection(i))
                    for i in range(quarantined)
                ],
            )
        )
    finally:
        store.close()


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        (n,) = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


def test_prune_samples_deletes_only_old_ones_in_chunks(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    now = 100 * DAY_MS
    _seed(db, received_at=now - 10 * DAY_MS, first_seq=1, n=250)
    _seed(db, received_at=now - DAY_MS, first_seq=1000, n=50)
    store = open_store(db)
    try:
        assert store.prune_samples(received_before=now - 5 * DAY_MS, chunk=100) == 100
        assert store.prune_samples(received_before=now - 5 * DAY_MS, chunk=100) == 100
        assert store.prune_samples(received_before=now - 5 * DAY_MS, chunk=100) == 50
        assert store.prune_samples(received_before=now - 5 * DAY_MS, chunk=100) == 0
        state = store.vehicle_state(VIN, tenure=1)
    finally:
        store.close()
    assert _count(db, "samples") == 50
    assert state is not None
    assert state.latest[SPEED] == (1049.0, now - DAY_MS)  # the latest values stay


def test_prune_quarantine_by_age_and_by_count(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    now = 100 * DAY_MS
    _seed(db, received_at=now - 40 * DAY_MS, first_seq=1, n=0, quarantined=30)
    _seed(db, received_at=now - DAY_MS, first_seq=1, n=0, quarantined=30)
    policy = RetentionPolicy(
        telemetry_days=None, quarantine_days=30, quarantine_max_entries=20, chunk=7
    )
    store = open_store(db)
    try:
        pauses: list[None] = []
        samples, entries, gaps = prune_once(store, policy, now, pause=lambda: pauses.append(None))
        kept = store.quarantine(limit=100)
    finally:
        store.close()
    assert (samples, entries, gaps) == (0, 40, 0)
    assert len(kept) == 20
    assert min(q.id for q in kept) == 41  # the newest twenty
    assert len(pauses) >= 40 // 7  # a pause between chunks


def test_one_vehicle_flooding_the_quarantine_loses_its_own_entries_not_others(
    tmp_path: Path,
) -> None:
    """Outside review 10 (MEDIUM): the count cap deleted the oldest entries of the whole
    installation, so one vehicle credential publishing refused messages pushed every other
    organization's quarantine out within one retention pass. The cap now takes from the
    vehicles (by topic, which the broker binds to the credential) that hold the most."""
    db = tmp_path / "t.db"
    now = 100 * DAY_MS
    victims = ("WP0ZZZ99ZTS392125", "WBA00000000000001")
    attacker = "WVWZZZ1JZXW000001"

    def entries(vin: str, n: int, at: int) -> list[QuarantineEntry]:
        topic = f"v1/vehicles/{vin}/telemetry"
        return [QuarantineEntry(at, topic, b"x", _rejection(i)) for i in range(n)]

    store = open_store(db)
    try:
        # the victims' entries are the oldest; the flood comes after them
        store.commit(IngestBatch(received_at=now - 3, quarantine=entries(victims[0], 4, now - 3)))
        store.commit(IngestBatch(received_at=now - 2, quarantine=entries(victims[1], 9, now - 2)))
        store.commit(IngestBatch(received_at=now - 1, quarantine=entries(attacker, 300, now - 1)))
        policy = RetentionPolicy(
            telemetry_days=None, quarantine_days=None, quarantine_max_entries=50, chunk=40
        )
        _, deleted, _ = prune_once(store, policy, now, pause=lambda: None)
    finally:
        store.close()
    assert deleted == 263
    with sqlite3.connect(db) as db_:
        held = dict(
            db_.execute("SELECT substr(topic, 13, 17), count(*) FROM quarantine GROUP BY 1")
        )
        (oldest_kept,) = db_.execute(
            "SELECT min(id) FROM quarantine WHERE topic LIKE ?", (f"%{attacker}%",)
        ).fetchone()
    assert held == {victims[0]: 4, victims[1]: 9, attacker: 37}
    assert oldest_kept == 13 + 300 - 37 + 1  # the flood's newest entries are the ones kept


def test_seq_gap_rows_go_with_the_telemetry_retention(tmp_path: Path) -> None:
    """A unit that skips every other number leaves one gap row per sample; they went on
    for good (security review 5, "left"). A retention pass deletes the samples and then
    the gaps below every sample still stored; with no telemetry retention both stay."""
    db = tmp_path / "t.db"
    now = 100 * DAY_MS
    store = open_store(db)
    try:
        for received_at, seqs in (
            (now - 10 * DAY_MS, range(1, 2001, 2)),
            (now, range(3001, 3011, 2)),
        ):
            store.commit(
                IngestBatch(
                    received_at=received_at,
                    samples=[Sample(VIN, seq, received_at, {SPEED: 1.0}) for seq in seqs],
                )
            )
    finally:
        store.close()
    assert _count(db, "seq_gaps") == 999 + 1 + 4  # the old ones, 2000..3000, the new ones
    keep_all = RetentionPolicy(telemetry_days=None, chunk=300)
    store = open_store(db)
    try:
        assert prune_once(store, keep_all, now) == (0, 0, 0)
        assert _count(db, "seq_gaps") == 1004
        policy = RetentionPolicy(telemetry_days=5, chunk=300)
        pauses: list[None] = []
        assert prune_once(store, policy, now, pause=lambda: pauses.append(None)) == (1000, 0, 1000)
        assert len(pauses) >= 2 * (1000 // 300)
    finally:
        store.close()
    assert _count(db, "samples") == 5
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT start, end FROM seq_gaps ORDER BY start").fetchall()
    assert kept == [(3002, 3002), (3004, 3004), (3006, 3006), (3008, 3008)]


def test_a_large_refused_payload_is_kept_as_a_prefix_with_size_and_hash(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    big = bytes(range(256)) * 1024  # 256 KiB
    small = b'{"vin": 1}'
    store = open_store(db, quarantine_payload_bytes=1000)
    try:
        store.commit(
            IngestBatch(
                received_at=1,
                quarantine=[
                    QuarantineEntry(1, "t", big, _rejection(1)),
                    QuarantineEntry(1, "t", big, _rejection(2)),  # one payload, two reasons
                    QuarantineEntry(1, "t", small, _rejection(3)),
                ],
            )
        )
        third, second, first = store.quarantine(limit=10)
    finally:
        store.close()
    for entry in (first, second):
        assert entry.payload == big[:1000]
        assert entry.payload_size == len(big)
        assert entry.payload_sha256 == hashlib.sha256(big).hexdigest()
    assert third.payload == small
    assert third.payload_size == len(small)
    assert db.stat().st_size < 100_000


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as old:  # the quarantine as schema version 1 had it
        old.executescript(
            "CREATE TABLE quarantine (id INTEGER PRIMARY KEY, received_at INTEGER NOT NULL, "
            "topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, vin TEXT, "
            "seq INTEGER, signal TEXT, payload BLOB NOT NULL); PRAGMA user_version = 1;"
        )
        old.execute(
            "INSERT INTO quarantine (received_at, topic, reason, detail, payload) "
            "VALUES (1, 't', 'malformed_json', 'd', ?)",
            (b"old payload",),
        )
    store = open_store(db)
    try:
        store.commit(
            IngestBatch(received_at=2, quarantine=[QuarantineEntry(2, "t", b"new", _rejection(1))])
        )
        new, old_entry = store.quarantine(limit=10)
    finally:
        store.close()
    assert old_entry.payload_size == len(b"old payload")
    assert old_entry.payload_sha256 == hashlib.sha256(b"old payload").hexdigest()
    assert new.payload_sha256 == hashlib.sha256(b"new").hexdigest()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


@pytest.mark.slow
def test_the_gateway_deletes_what_is_past_its_retention(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    db = data / "telemetry.db"
    data.mkdir()
    now = time.time_ns() // 1_000_000
    _seed(db, received_at=now - 3 * DAY_MS, first_seq=1, n=120, quarantined=4)
    _seed(db, received_at=now, first_seq=500, n=10, quarantined=4)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "gateway",
            "--mqtt-url",
            mosquitto.url,
            "--data-dir",
            str(data),
            "--client-id",
            "retention-gateway",
            "--log-level",
            "WARNING",
            "--telemetry-retention-days",
            "2",
            "--quarantine-retention-days",
            "0",
            "--quarantine-max-entries",
            "5",
        ]
    )
    try:
        wait_until(
            lambda: _count(db, "samples") == 10 and _count(db, "quarantine") == 5,
            timeout=30,
            what="the gateway to prune old samples and quarantine entries",
        )
    finally:
        process.terminate()
        assert process.wait(30) == 0
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT min(seq) FROM samples").fetchone() == (500,)
