"""``telematics fleet-worker`` as real processes (decision 0029): two of them share the
partitions about evenly, evaluate what the gateways committed, and when one is killed the
other takes its partitions over once the lease expired; a stopped one gives its partitions
back at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.fleet_log import AlertFilter, FleetLog
from gateway.statedb.fleets import FleetRepository
from gateway.store import IngestBatch, Tenure, open_store
from schemas import Sample
from tests.support.processes import kill_processes_mentioning
from tests.support.waiting import wait_until

VINS = ("WFLEETP0000000001", "WFLEETP0000000002")
SPEED = "Vehicle.Speed"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"


@pytest.fixture
def data(tmp_path: Path) -> Iterator[tuple[Path, StateDatabase]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    db = StateDatabase(f"sqlite:///{data_dir / 'state.db'}")
    db.upgrade()
    accounts = AccountRepository(db)
    org = accounts.create_account("organization", "vans", now=1)
    for vin in VINS:
        accounts.provision_vehicle(
            vin=vin,
            account_id=org.id,
            label=None,
            mqtt_password_hash=None,
            provisioned_by=None,
            now=1,
        )
    FleetRepository(db).set_rule_settings(
        org.id, {"rules": {"speed_limit_kmh": 100.0, "overspeed_min_ms": 0}, "trips": {}}, now=1
    )
    try:
        yield data_dir, db
    finally:
        db.dispose()
        kill_processes_mentioning(tmp_path)


def start(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway", "fleet-worker", "--data-dir", str(data_dir)]
    return subprocess.Popen([*argv, "--log-level", "WARNING", "--lease-seconds", "2", *extra])


def speeding(vin: str, at: int) -> list[Sample]:
    values: dict[str, Any] = {SPEED: 130.0, LAT: 48.1, LON: 11.5}
    return [Sample(vin, seq, at + seq * 1_000, values) for seq in range(1, 4)]


def commit(data_dir: Path, samples: list[Sample], at: int) -> None:
    store = open_store(data_dir / "telemetry.db")
    try:
        tenures = {s.vin: Tenure(1, 0) for s in samples}
        store.commit(IngestBatch(received_at=at, samples=samples, events=[], tenures=tenures))
    finally:
        store.close()


def holders(db: StateDatabase) -> dict[str | None, int]:
    """Partitions per owner whose lease has not expired (None: free)."""
    with db.read() as session:
        rows = session.execute(text("SELECT owner, lease_until FROM fleet_partitions")).all()
    now = time.time_ns() // 1_000_000
    out: dict[str | None, int] = {}
    for owner, until in rows:
        key = owner if owner is not None and until >= now else None
        out[key] = out.get(key, 0) + 1
    return out


def overspeeding(db: StateDatabase) -> set[str]:
    alerts = FleetLog(db).alerts(AlertFilter(), before=None, limit=100)
    return {a.vin for a in alerts if a.kind == "overspeed"}


def test_two_worker_processes_share_the_work_and_one_takes_over_a_dead_ones(
    data: tuple[Path, StateDatabase],
) -> None:
    data_dir, db = data
    now = time.time_ns() // 1_000_000
    commit(data_dir, speeding(VINS[0], now), now)
    first = start(data_dir)
    wait_until(lambda: overspeeding(db) == {VINS[0]}, timeout=60, what="the first alert")
    second = start(data_dir, "--nice", "3")
    wait_until(lambda: len(FleetLog(db).workers(now=0)) == 2, timeout=60, what="two workers")

    def even() -> bool:
        counts = holders(db)
        return None not in counts and sorted(counts.values()) == [8, 8]

    wait_until(even, timeout=60, what="8 partitions each")
    assert first.poll() is None
    assert second.poll() is None

    os.kill(first.pid, signal.SIGKILL)  # no goodbye: its leases have to expire
    first.wait(10)
    wait_until(lambda: list(holders(db).values()) == [16], timeout=60, what="a takeover")
    later = time.time_ns() // 1_000_000
    commit(data_dir, speeding(VINS[1], later), later)
    wait_until(lambda: overspeeding(db) == set(VINS), timeout=60, what="the second alert")

    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert holders(db) == {None: 16}  # given back at once, not left to expire
    assert FleetLog(db).workers(now=0) == []
