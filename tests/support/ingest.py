"""Publishing telemetry and reading what the gateway stored (SQLite), for ingest tests."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import orjson

from gateway.broker import MosquittoProcess


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def publish(
    broker: MosquittoProcess,
    topic: str,
    payload: bytes,
    *,
    retain: bool = False,
    properties: tuple[str, ...] = (),
) -> None:
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-V",
            "mqttv5",
            "-t",
            topic,
            "-s",
            *(["-r"] if retain else []),
            *properties,
        ],
        input=payload,
        check=True,
        timeout=10,
    )


def telemetry(vin: str) -> str:
    return f"v1/vehicles/{vin}/telemetry"


def query(db_path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def counter(db_path: Path, name: str, label: str = "") -> float:
    rows = query(db_path, "SELECT value FROM counters WHERE name = ? AND label = ?", name, label)
    return float(rows[0][0]) if rows else 0.0


def sample(vin: str, seq: int, **signals: object) -> bytes:
    sig = signals or {"Vehicle.Speed": 42.0, "Vehicle.IsMoving": True}
    return orjson.dumps({"vin": vin, "seq": seq, "ts": now_ms(), "signals": sig})


def _unit_command(broker: MosquittoProcess, topic: str) -> list[str]:
    """``mosquitto_pub`` publishing each line of its stdin at QoS 1 over MQTT 5."""
    return ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-V", "mqttv5", "-t", topic, "-l"]


def publish_lines(
    broker: MosquittoProcess, topic: str, lines: Iterable[bytes]
) -> subprocess.Popen[bytes]:
    """A unit streaming QoS 1 messages, one per line (``mosquitto_pub -l``)."""
    proc = subprocess.Popen(_unit_command(broker, topic), stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(b"".join(line + b"\n" for line in lines))
    proc.stdin.close()
    return proc


@contextmanager
def streams_in_two_halves(
    broker: MosquittoProcess, vins: list[str], per_vehicle: int
) -> Iterator[Callable[[], None]]:
    """One unit per VIN streaming ``per_vehicle`` samples (seq 0..n-1) at QoS 1.

    The first half of every unit's samples is published on entry; the second half only
    when the caller calls the function this yields, which then waits until every unit has
    published everything. A test that disturbs the gateway or the store "mid-stream" does
    it between the two: however fast the gateway is, the stream cannot have finished
    before the disturbance. On leaving, a unit still running (a failed test) is killed.
    """
    half = per_vehicle // 2
    units = [
        subprocess.Popen(_unit_command(broker, telemetry(vin)), stdin=subprocess.PIPE)
        for vin in vins
    ]

    def send(vin: str, unit: subprocess.Popen[bytes], seqs: range) -> None:
        assert unit.stdin is not None
        unit.stdin.write(b"".join(sample(vin, s) + b"\n" for s in seqs))
        unit.stdin.flush()

    def finish() -> None:
        for vin, unit in zip(vins, units, strict=True):
            send(vin, unit, range(half, per_vehicle))
            assert unit.stdin is not None
            unit.stdin.close()
        for unit in units:
            assert unit.wait(120) == 0

    try:
        for vin, unit in zip(vins, units, strict=True):
            send(vin, unit, range(half))
        yield finish
    finally:
        for unit in units:
            if unit.poll() is None:
                unit.kill()
                unit.wait()
            if unit.stdin is not None and not unit.stdin.closed:
                # what it was sent last was never read (it was killed): closing may say so
                with suppress(BrokenPipeError):
                    unit.stdin.close()
