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


def _drive(vin: str, t0: int) -> list[Sample]:
    """Ignition on, two minutes at up to 130 km/h (overspeed, harsh braking), low battery,
    six minutes standing with the ignition on (idling), ignition off: one trip."""
    ign, soc, odo_name = "Vehicle.LowVoltageSystemState", SOC, "Vehicle.TraveledDistance"
    out: list[Sample] = []
    t, seq, odo = t0, 1, 0.0
    speeds = [0, 60, 90, 130, 130, 130, 130, 130, 130, 130, 40, 60, 60, 60, 60, 20, 0]
    for i, v in enumerate(speeds):
        values: dict[str, Any] = {SPEED: float(v), odo_name: odo, LAT: 48.1 + i * 0.001, LON: 11.5}
        if i == 0:
            values[ign] = "ON"
        values[soc] = 22.0 - i * 0.6
        out.append(Sample(vin, seq, t, values))
        t, seq, odo = t + 5_000, seq + 1, odo + v / 3.6 * 5
    for _ in range(40):
        out.append(Sample(vin, seq, t, {SPEED: 0.0}))
        t, seq = t + 10_000, seq + 1
    out.append(Sample(vin, seq, t, {ign: "OFF", SPEED: 0.0}))
    return out


SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


def _provision(db: StateDatabase) -> None:
    accounts = AccountRepository(db)
    org = accounts.create_account("organization", "vans", now=1)
    for vin in VINS:
        accounts.provision_vehicle(
            vin=vin, account_id=org.id, label=None, mqtt_password_hash=None,
            provisioned_by=None, now=1,
        )  # fmt: skip
    FleetRepository(db).set_rule_settings(
        org.id, {"rules": {"speed_limit_kmh": 100.0}, "trips": {}}, now=1
    )


def _outcome(db: StateDatabase) -> tuple[Any, ...]:
    from gateway.statedb.events import EventLog
    from gateway.statedb.fleet_log import TripFilter

    log = FleetLog(db)
    alerts = sorted(
        (a.vin, a.kind, a.key, a.severity, a.start_at, a.end_at, sorted(a.detail.items()))
        for a in log.alerts(AlertFilter(), before=None, limit=1000)
    )
    trips = sorted(
        (t.vin, t.start_at, t.end_at, round(t.distance_m, 3), t.ended_by)
        for t in log.trips(TripFilter(), before=None, limit=1000)
    )
    events: dict[tuple[str, str, int], list[str]] = {}
    for e in EventLog(db).after(0, limit=100_000):
        if e.type.startswith(("alert.", "trip.")):
            key = (e.data["vin"], e.data.get("key", e.type), e.data["start_at"])
            events.setdefault(key, []).append(e.type)
    return alerts, trips, sorted(events.items())


def _cursors(db: StateDatabase) -> tuple[int, int]:
    """The lowest sample cursor of the partitions, and the passes noted (states behind)."""
    with db.read() as session:
        low = session.execute(text("SELECT min(sample_cursor) FROM fleet_partitions")).scalar()
        notes = session.execute(text("SELECT count(*) FROM fleet_passes")).scalar()
    return int(low or 0), int(notes or 0)


def _last_id(data_dir: Path) -> int:
    store = open_store(data_dir / "telemetry.db")
    try:
        return store.samples_after(0, limit=10_000)[-1].id
    finally:
        store.close()


def _uninterrupted(tmp_path: Path, data_dir: Path) -> tuple[Any, ...]:
    """One worker over the whole log in process, no crash, its states written in every
    pass."""
    from gateway.fleet.worker import RulesWorker, WorkerSettings

    other = StateDatabase(f"sqlite:///{tmp_path / 'uninterrupted.db'}")
    other.upgrade()
    try:
        _provision(other)
        now = time.time_ns() // 1_000_000
        w = RulesWorker(
            FleetLog(other),
            FleetRepository(other),
            lambda: open_store(data_dir / "telemetry.db", readonly=True),
            WorkerSettings(settle_ms=0, flush_ms=0),
            lambda: now,
        )
        while w.step():
            pass
        return _outcome(other)
    finally:
        other.dispose()


def test_a_worker_killed_between_two_writes_of_its_states_changes_no_alert_or_trip(
    state_db_url: str, tmp_path: Path
) -> None:
    """Decision 0050: a fleet-worker process whose states are only in memory (written every
    hour here) is killed (SIGKILL) after it evaluated half of two drives; a second one
    takes its partitions over once the lease expired, replays the noted passes and
    evaluates the rest. The alerts, trips and their events equal those of one uninterrupted
    worker over the same log (in process), none twice; stopped, it writes its states."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    db = StateDatabase(state_db_url)
    db.upgrade()
    _provision(db)
    now = time.time_ns() // 1_000_000
    drives = [_drive(vin, now - 600_000) for vin in VINS]
    cut = 30  # the first worker evaluates samples 1-30 of each drive, in three commits
    for lo in range(0, cut, 10):
        commit(data_dir, [s for d in drives for s in d[lo : lo + 10]], now)
    first_end = _last_id(data_dir)
    argv = ["--state-db-url", state_db_url, "--flush-seconds", "3600", "--no-maintenance"]
    procs = []
    try:
        procs.append(start(data_dir, *argv))
        wait_until(lambda: _cursors(db)[0] == first_end, timeout=60, what="the first half")
        os.kill(procs[0].pid, signal.SIGKILL)  # no goodbye, and its states only in memory
        procs[0].wait(10)
        assert _cursors(db)[1] > 0  # passes noted: the states were not written
        with db.read() as session:
            assert session.execute(text("SELECT count(*) FROM fleet_vin_state")).scalar() == 0
        later = time.time_ns() // 1_000_000
        commit(data_dir, [s for d in drives for s in d[cut:]], later)
        end = _last_id(data_dir)
        procs.append(start(data_dir, *argv))
        wait_until(lambda: _cursors(db)[0] == end, timeout=60, what="the takeover and the rest")
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(30) == 0
        assert _cursors(db)[1] == 0  # stopped: its states written, no pass left to replay
        crashed = _outcome(db)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        db.dispose()
    uninterrupted = _uninterrupted(tmp_path, data_dir)
    assert crashed == uninterrupted
    alerts, trips, events = uninterrupted
    assert {a[1] for a in alerts} >= {"overspeed", "harsh_braking", "low_soc", "idling"}
    assert len(trips) == 2
    raised = [kinds for key, kinds in events if key[1] != "trip.finished"]
    assert all(kinds.count("alert.raised") == 1 for kinds in raised)
