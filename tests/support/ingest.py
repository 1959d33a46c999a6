"""Publishing telemetry and reading what the gateway stored (SQLite), for ingest tests."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterable
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


def publish_lines(
    broker: MosquittoProcess, topic: str, lines: Iterable[bytes]
) -> subprocess.Popen[bytes]:
    """A unit streaming QoS 1 messages, one per line (``mosquitto_pub -l``)."""
    proc = subprocess.Popen(
        ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-V", "mqttv5", "-t", topic, "-l"],
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b"".join(line + b"\n" for line in lines))
    proc.stdin.close()
    return proc
