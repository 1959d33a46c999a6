"""What one refused message may cost the store (security review 6, decision 0043).

The quarantine keeps every refusal with the message's payload (its first 4 KiB), and a
message of bad *signals* keeps its good ones: a refusal per bad signal. A vehicle
credential sending one 250 kB batch of 1,000 samples with 19 made-up signals each had the
gateway write 19,000 quarantine rows, each with the same 4 KiB: **188 MB into the telemetry
database and ~1.5 s of the gateway's one process for one message** (a valid message of
that size: 0.04 s), while every other vehicle's samples waited. The same for a batch of
samples with implausible timestamps (a row each). Now a message lists its first
:data:`~schemas.REJECTIONS_LISTED_PER_MESSAGE` refusals one by one and the rest as one entry
per reason that says how many; the counters still count every refused signal and sample.
Run on the real Batcher and the real SQLite store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway import metrics
from gateway.core.batching import Batcher, Tenure
from gateway.store import open_store
from schemas import REJECTIONS_LISTED_PER_MESSAGE, Reason

VIN = "WVWZZZ1JZXW000043"
TOPIC = f"v1/vehicles/{VIN}/telemetry"
SPEED = "Vehicle.Speed"


def _disk(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))


def _commit(db: Path, payload: bytes, now: int) -> tuple[int, int, dict[tuple[str, str], float]]:
    """(samples stored, quarantine entries, counters) after one message."""
    batcher = Batcher(clock_ms=lambda: now, tenure_of=lambda vin: Tenure(1, 0, None))
    store = open_store(db)
    try:
        assert batcher.add(TOPIC, payload)
        batch = batcher.take()
        store.commit(batch)
        entries = store.quarantine(limit=100_000)
        return len(batch.samples), len(entries), store.counters()
    finally:
        store.close()


def test_a_message_of_many_bad_signals_costs_a_bounded_quarantine(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    now = int(time.time() * 1000)
    samples = [
        {"seq": s, "ts": now, "signals": {SPEED: 50.0, **{f"X{s * 19 + j}": 0 for j in range(19)}}}
        for s in range(1000)
    ]
    payload = json.dumps({"vin": VIN, "samples": samples}, separators=(",", ":")).encode()
    assert len(payload) < 262_144
    started = time.process_time()
    stored, entries, counters = _commit(db, payload, now)
    spent = time.process_time() - started
    assert stored == 1000  # the good signal of every sample is kept, as before
    # the first refusals one by one, then one entry for the rest of the reason
    assert entries == REJECTIONS_LISTED_PER_MESSAGE + 1, entries
    assert counters[(metrics.QUARANTINED, Reason.UNKNOWN_SIGNAL.value)] == 19_000
    assert _disk(db) < 5_000_000, f"{_disk(db) / 1e6:.0f} MB for one 250 kB message"
    print(f"one message of 19,000 bad signals: {spent:.3f} s of CPU")


def test_the_last_entry_says_how_many_more_were_refused(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    now = int(time.time() * 1000)
    bad = {f"X{j}": 0 for j in range(REJECTIONS_LISTED_PER_MESSAGE + 5)}
    payload = json.dumps({"vin": VIN, "seq": 1, "ts": now, "signals": {SPEED: 1.0, **bad}})
    _commit(db, payload.encode(), now)
    store = open_store(db)
    try:
        entries = store.quarantine(limit=100)
    finally:
        store.close()
    summary = entries[0]  # newest first: the summary comes after the listed ones
    assert summary.reason == Reason.UNKNOWN_SIGNAL.value
    assert summary.signal is None
    assert summary.detail.startswith("5 more unknown_signal refusals"), summary.detail
    assert len(entries) == REJECTIONS_LISTED_PER_MESSAGE + 1
    assert all(e.signal in bad for e in entries[1:])


def test_a_batch_of_implausible_timestamps_costs_a_bounded_quarantine(tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    now = int(time.time() * 1000)
    samples = [{"seq": s, "ts": 1_000, "signals": {SPEED: 1.0}} for s in range(1000)]
    payload = json.dumps({"vin": VIN, "samples": samples}).encode()
    stored, entries, counters = _commit(db, payload, now)
    assert stored == 0
    assert entries == REJECTIONS_LISTED_PER_MESSAGE + 1, entries
    assert counters[(metrics.QUARANTINED, Reason.IMPLAUSIBLE_TIMESTAMP.value)] == 1000
