"""The fleet rules worker (``gateway.fleet.worker``) over a real telemetry store and state
database (SQLite and PostgreSQL): alerts and trips are a function of each vehicle's log,
not of how ingest split and ordered the commits (what ``--gateways 2`` does), effects are
stored once, a second worker takes over a dead one's partitions, and late samples rejoin
their trip."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.fleet.worker import RulesWorker, WorkerSettings
from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.fleet_log import AlertFilter, FleetLog, LeaseLost, TripFilter
from gateway.statedb.fleets import FleetRepository
from gateway.store import IngestBatch, TelemetryBackend, Tenure, open_store
from schemas import Event, EventType, Sample

VINS = ("WFLEETW0000000001", "WFLEETW0000000002")
T0 = 1_800_000_000_000
SPEED = "Vehicle.Speed"
IGNITION = "Vehicle.LowVoltageSystemState"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
ODO = "Vehicle.TraveledDistance"


def drive(vin: str, start_seq: int = 1, t0: int = T0) -> list[Sample]:
    """Ignition on, 4 min at up to 130 km/h (overspeed, harsh braking), low battery,
    standing 6 min with the ignition on (idling), ignition off: one trip."""
    out: list[Sample] = []
    t, seq, odo = t0, start_seq, 0.0
    speeds = [0, 60, 90, 130, 130, 130, 130, 130, 130, 130, 130, 130, 40, 60] + [60] * 30 + [20, 0]
    for i, v in enumerate(speeds):
        values: dict[str, Any] = {SPEED: float(v), ODO: odo, LAT: 48.0 + i * 0.001, LON: 11.5}
        if i == 0:
            values[IGNITION] = "ON"
        values[SOC] = 30.0 - i * 0.5
        out.append(Sample(vin, seq, t, values))
        t, seq, odo = t + 5_000, seq + 1, odo + v / 3.6 * 5
    for _ in range(40):  # standing, ignition on: idling
        out.append(Sample(vin, seq, t, {SPEED: 0.0}))
        t, seq = t + 10_000, seq + 1
    out.append(Sample(vin, seq, t, {IGNITION: "OFF", SPEED: 0.0}))
    return out


@pytest.fixture
def world(state_db_url: str, tmp_path: Path) -> Iterator[tuple[StateDatabase, Path]]:
    db = StateDatabase(state_db_url)
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
        org.id, {"rules": {"speed_limit_kmh": 100.0}, "trips": {}}, now=1
    )
    try:
        yield db, tmp_path / "telemetry.db"
    finally:
        db.dispose()


def worker(db: StateDatabase, path: Path, clock: Callable[[], int], **kw: Any) -> RulesWorker:
    settings = WorkerSettings(**{"partitions": 4, "settle_ms": 1_000, "tick_ms": 10**12, **kw})
    return RulesWorker(
        FleetLog(db), FleetRepository(db), lambda: open_store(path, readonly=True), settings, clock
    )


def commit(
    store: TelemetryBackend, samples: list[Sample], at: int, events: list[Event] | None = None
) -> None:
    tenures = {s.vin: Tenure(1, 0) for s in samples}
    store.commit(IngestBatch(received_at=at, samples=samples, events=events or [], tenures=tenures))


def outcome(db: StateDatabase) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    log = FleetLog(db)
    alerts = sorted(
        (a.vin, a.kind, a.key, a.start_at, a.end_at)
        for a in log.alerts(AlertFilter(), before=None, limit=1000)
    )
    trips = sorted(
        (t.vin, t.start_at, t.end_at, round(t.distance_m, 3), t.ended_by)
        for t in log.trips(TripFilter(), before=None, limit=1000)
    )
    return alerts, trips


def test_the_worker_turns_a_drive_into_alerts_and_one_trip(
    world: tuple[StateDatabase, Path],
) -> None:
    db, path = world
    store = open_store(path)
    now = [T0]
    commit(
        store, drive(VINS[0]), T0, [Event(VINS[0], 1, T0 + 1000, EventType.DTC_SET, code="P0420")]
    )
    w = worker(db, path, lambda: now[0])
    assert w.step() == 0  # not settled yet
    now[0] += 5_000
    assert w.step() > 0
    assert w.step() == 0  # nothing new
    alerts, trips = outcome(db)
    kinds = sorted(a[1] for a in alerts)
    assert kinds == sorted(
        [
            "ignition",
            "overspeed",
            "harsh_braking",
            "idling",
            "low_soc",
            "fault_code",
            "harsh_acceleration",
        ]
    ), alerts
    assert len(trips) == 1
    assert trips[0][4] == "parked"  # stood longer than parking_ms with the ignition on
    store.close()


def test_in_order_samples_are_evaluated_at_once_and_a_gap_waits_the_window(
    world: tuple[StateDatabase, Path],
) -> None:
    """Once the worker knows a vehicle's next seq, its in-order samples are evaluated in
    the step right after their commit, with the clock standing still (no settle window):
    the overspeed alert is there at once. A missing seq holds the samples behind it back
    until the window has passed (the missing one may still come from another gateway),
    and then they are evaluated with the gap."""
    db, path = world
    store = open_store(path)
    samples = drive(VINS[0])  # overspeed from samples[3] (130 km/h) for 10 s and more
    now = [T0]
    w = worker(db, path, lambda: now[0], settle_ms=60_000)
    commit(store, samples[:2], now[0])
    assert w.step() == 0  # a vehicle seen for the first time waits the window once
    now[0] += 60_000
    assert w.step() == 2
    commit(store, samples[2:8], now[0])
    assert w.step() == 6  # in order: at once, the clock has not moved
    alerts, _ = outcome(db)
    assert [a[1] for a in alerts if a[1] == "overspeed"] == ["overspeed"]
    commit(store, samples[9:12], now[0])  # samples[8] is missing
    assert w.step() == 0
    now[0] += 59_999
    assert w.step() == 0  # still within the window
    now[0] += 1
    assert w.step() == 3  # the window has passed: evaluated, with a seq gap noted
    commit(store, [samples[8], *samples[12:14]], now[0])
    assert w.step() == 3  # the late one fills the gap (older than next: never waits)
    store.close()


def _split_like_two_gateways(samples: list[Sample], seed: int) -> list[list[Sample]]:
    """Round-robin to two gateways, each committing its share in batches of 1-7; the
    batches of the two interleave at random, so a vehicle's seqs reach the log out of
    order."""
    rng = random.Random(seed)
    shares: list[list[Sample]] = [samples[0::2], samples[1::2]]
    batches: list[list[list[Sample]]] = []
    for share in shares:
        cut, i = [], 0
        while i < len(share):
            n = rng.randint(1, 7)
            cut.append(share[i : i + n])
            i += n
        batches.append(cut)
    out: list[list[Sample]] = []
    while batches[0] or batches[1]:
        pick = rng.choice([b for b in batches if b])
        out.append(pick.pop(0))
    return out


@pytest.mark.parametrize(("seed", "settle_ms"), [(1, 0), (2, 0), (3, 5_000), (4, 5_000)])
def test_two_gateways_give_the_same_alerts_and_trips_as_one(
    tmp_path: Path, seed: int, settle_ms: int
) -> None:
    """Each run is an installation of its own (its own state database and log). With
    ``settle_ms`` 5 s the clock moves 1 ms per batch while the log is written, so nothing
    settles meanwhile: what the worker evaluates then goes by seq order alone."""
    results = []
    for mode in ("one", "two"):
        (tmp_path / mode).mkdir()
        db = StateDatabase(f"sqlite:///{tmp_path / mode / 'state.db'}")
        results.append(_run_scenario(db, tmp_path / mode, mode, seed, settle_ms))
    assert results[0] == results[1]
    assert results[0][0]
    assert results[0][1]


def _run_scenario(
    db: StateDatabase, tmp: Path, mode: str, seed: int, settle_ms: int
) -> tuple[Any, ...]:
    db.upgrade()
    accounts = AccountRepository(db)
    org = accounts.create_account("organization", f"vans {mode}", now=1)
    vins = [f"WFL{'A' if mode == 'one' else 'B'}{seed}{n:012d}" for n in range(2)]
    for vin in vins:
        accounts.provision_vehicle(
            vin=vin,
            account_id=org.id,
            label=None,
            mqtt_password_hash=None,
            provisioned_by=None,
            now=1,
        )
    FleetRepository(db).set_rule_settings(org.id, {"rules": {"speed_limit_kmh": 100.0}}, now=1)
    path = tmp / "telemetry.db"
    stores = [open_store(path), open_store(path)]
    samples = sorted((s for vin in vins for s in drive(vin)), key=lambda s: (s.ts, s.vin))
    now = [T0]
    w = worker(db, path, lambda: now[0], settle_ms=settle_ms)
    batches = [samples] if mode == "one" else _split_like_two_gateways(samples, seed)
    for i, batch in enumerate(batches):
        commit(stores[i % 2], batch, now[0])
        now[0] += 1
        if mode == "two" and i % 3 == 0:
            w.step()  # the worker runs while the log is still being written
    now[0] += 10_000
    while w.step():
        pass
    for store in stores:
        store.close()
    alerts, trips = outcome(db)
    rename = {vin: n for n, vin in enumerate(vins)}
    db.dispose()
    return (
        sorted((rename[a[0]], *a[1:]) for a in alerts if a[0] in rename),
        sorted((rename[t[0]], *t[1:]) for t in trips if t[0] in rename),
    )


def test_a_late_upload_rejoins_its_trip(world: tuple[StateDatabase, Path]) -> None:
    """Samples 16-40 arrive after the rest (store-and-forward after a tunnel): the worker
    has evaluated the drive without them; they are late for the trip detector, which
    recomputes from the trip's start over the stored samples: still the one trip."""
    db, path = world
    store = open_store(path)
    samples = drive(VINS[0])
    held_back = samples[15:40]
    now = [T0 + 3_600_000]
    w = worker(db, path, lambda: now[0], settle_ms=0)
    commit(store, [s for s in samples if s not in held_back], now[0])
    w.step()
    now[0] += 1_000
    commit(store, held_back, now[0])
    w.step()
    _, trips = outcome(db)
    assert [(t[1], t[2], t[4]) for t in trips] == [(samples[1].ts, samples[45].ts, "parked")]
    store.close()


def test_a_dead_workers_partitions_are_taken_over_and_a_stale_step_is_refused(
    world: tuple[StateDatabase, Path],
) -> None:
    db, path = world
    store = open_store(path)
    now = [T0]
    first = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=3_000)
    second = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=3_000)
    assert first.step() == 0  # holds every partition now
    commit(store, drive(VINS[0]), now[0])
    assert second.step() == 0  # holds nothing while the first one's leases last
    now[0] += 3_001  # the first one died without releasing
    assert second.step() > 0
    with pytest.raises(LeaseLost):
        FleetLog(db).commit_partition(
            0, first.settings.owner, read_from=(0, 0), cursor=(1, 0), steps=[], now=now[0]
        )
    alerts, trips = outcome(db)
    assert len(trips) == 1
    assert len([a for a in alerts if a[1] == "overspeed"]) == 1
    store.close()


def test_workers_share_the_partitions_evenly_and_the_last_one_takes_them_all(
    world: tuple[StateDatabase, Path],
) -> None:
    """A worker that starts beside a running one gets half of the partitions within two
    renewals (decision 0029: the running one gives back its surplus, the new one takes
    it); a third makes it thirds (rounded up); when the others die, the survivor takes
    every partition once their leases expired."""
    db, path = world
    now = [T0]
    workers = [worker(db, path, lambda: now[0], partitions=16, lease_ms=3_000) for _ in range(3)]

    def held(ws: list[RulesWorker]) -> list[int]:
        return [len(w._leases(now[0])) for w in ws]

    first, second, third = workers
    assert held([first]) == [16]
    assert held([second]) == [0]  # nothing free: the first one holds every lease
    now[0] += 1_000  # a third of the lease: both renew
    assert held([first, second]) == [8, 8]
    assert sorted(FleetLog(db).workers(now=now[0])) == sorted(
        [first.settings.owner, second.settings.owner]
    )
    assert held([third]) == [0]
    now[0] += 1_000
    assert sorted(held(workers)) == [4, 6, 6]
    now[0] += 1_000
    assert sorted(held(workers)) == [4, 6, 6]
    survivor = workers[1]
    now[0] += 3_001  # the others died without giving anything back
    assert len(survivor._leases(now[0])) == 16
    assert FleetLog(db).workers(now=now[0]) == [survivor.settings.owner]
    survivor.stop()
    assert FleetLog(db).workers(now=now[0]) == []


def test_a_worker_that_takes_its_partitions_back_reads_the_states_again(
    world: tuple[StateDatabase, Path],
) -> None:
    """The worker keeps each vehicle's state in memory while it holds the lease (decision
    0024); when another worker held the partition meanwhile, the remembered state is stale
    and must be read again: here the other one closed the overspeed alert, so speeding
    again is a second alert (a stale state would still see the first one open)."""
    db, path = world
    store = open_store(path)
    now = [T0]
    first = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=3_000)
    second = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=3_000)
    seq = [0]

    def drive_at(speeds: list[float]) -> None:
        samples = []
        for v in speeds:
            seq[0] += 1
            values: dict[str, Any] = {SPEED: v, LAT: 48.0, LON: 11.5, IGNITION: "ON"}
            samples.append(Sample(VINS[0], seq[0], T0 + seq[0] * 5_000, values))
        commit(store, samples, now[0])

    assert first.step() == 0  # holds every partition
    drive_at([130.0] * 4)  # overspeed for 15 s: opened
    assert first.step() > 0
    now[0] += 3_001  # the first one stalls past its lease
    drive_at([40.0, 40.0])  # the second one closes it
    assert second.step() > 0
    second.stop()
    drive_at([130.0] * 4)  # the first one again: a new overspeed
    assert first.step() > 0
    alerts, _ = outcome(db)
    overspeed = [a for a in alerts if a[1] == "overspeed"]
    assert len(overspeed) == 2
    assert overspeed[0][4] is not None  # the first one closed
    store.close()


def test_a_vehicles_fleet_limit_is_held_a_few_seconds_and_then_read_again(
    world: tuple[StateDatabase, Path],
) -> None:
    """The worker's settings cache holds each VIN's fleet limit for its time to live
    (decision 0024: read for every partition of every pass, it was a twentieth of the
    worker's CPU); a changed limit applies after that, and a VIN in no fleet has none."""
    from gateway.fleet.config import ConfigCache

    db, _ = world
    fleets = FleetRepository(db)
    org = FleetLog(db).accounts_of([(VINS[0], 1)])[(VINS[0], 1)]
    vans = fleets.create_fleet(
        account_id=org, name="vans", kind="fleet", speed_limit_kmh=70.0, now=1
    )
    fleets.add_vehicle(vans.id, VINS[0], now=1)
    now = [T0]
    cache = ConfigCache(fleets, lambda: now[0], ttl_ms=5_000)

    def limits() -> dict[str, float | None]:
        got = cache.for_vins(org, list(VINS))
        return {vin: rules.fleet_speed_limit_kmh for vin, (rules, _) in got.items()}

    assert limits() == {VINS[0]: 70.0, VINS[1]: None}
    fleets.update_fleet(vans.id, {"speed_limit_kmh": 50.0})
    now[0] += 4_999
    assert limits()[VINS[0]] == 70.0  # still held
    now[0] += 1
    assert limits() == {VINS[0]: 50.0, VINS[1]: None}


def test_settings_read_again_unchanged_are_the_same_objects(
    world: tuple[StateDatabase, Path],
) -> None:
    """The rules keep what they derive from the settings by identity (each vehicle's
    quiet-path envelope, the fence index): settings read again after their time to live
    and found unchanged are the objects held before, with a fleet's limit too, so nothing
    is derived again every ``ttl_ms`` (decision 0056); a change gives new ones."""
    from gateway.fleet.config import ConfigCache

    db, _ = world
    fleets = FleetRepository(db)
    org = FleetLog(db).accounts_of([(VINS[0], 1)])[(VINS[0], 1)]
    vans = fleets.create_fleet(
        account_id=org, name="vans", kind="fleet", speed_limit_kmh=70.0, now=1
    )
    fleets.add_vehicle(vans.id, VINS[0], now=1)
    now = [T0]
    cache = ConfigCache(fleets, lambda: now[0], ttl_ms=5_000)
    first = cache.for_vins(org, list(VINS))
    now[0] += 5_000
    again = cache.for_vins(org, list(VINS))
    for vin in VINS:
        assert again[vin][0] is first[vin][0]
        assert again[vin][1] is first[vin][1]
    assert first[VINS[0]][0].fleet_speed_limit_kmh == 70.0
    assert cache.generation == 0
    fleets.set_rule_settings(org, {"rules": {"speed_limit_kmh": 90.0}, "trips": {}}, now=2)
    now[0] += 5_000
    changed = cache.for_vins(org, list(VINS))
    assert cache.generation == 1
    assert changed[VINS[1]][0] is not first[VINS[1]][0]
    assert changed[VINS[0]][0].speed_limit_kmh == 90.0
    assert changed[VINS[0]][0].fleet_speed_limit_kmh == 70.0


def test_a_pass_with_more_alerts_and_trips_than_one_insert_takes_keeps_them_in_order(
    world: tuple[StateDatabase, Path],
) -> None:
    """New alerts, trips and their events are inserted in slices (decision 0024: one long
    INSERT ... RETURNING grew with the square of its rows): every row is stored once and
    each event names the row it was made for, across the slices' boundaries."""
    from gateway.statedb.events import RETURNING_CHUNK, EventLog
    from gateway.statedb.fleet_log import AlertWrite, TripWrite, VinStep

    db, _ = world
    log = FleetLog(db)
    org = log.accounts_of([(VINS[0], 1)])[(VINS[0], 1)]
    n = 2 * RETURNING_CHUNK + 17
    step = VinStep(VINS[0], 1, org, {}, {})
    for i in range(n):
        at = T0 + i * 60_000
        step.alerts.append(
            AlertWrite("opened", "geofence_enter", f"geofence_enter:{i}", "info", at, at, {})
        )
        step.trips.append(
            TripWrite(at, at + 30_000, None, None, 500.0 + i, 50.0, 40.0, None, None,
                      "ignition_off", True, True)
        )  # fmt: skip
    log.take_partitions("slices", 1, now=T0, ttl_ms=60_000)
    log.commit_partition(0, "slices", read_from=(0, 0), cursor=(1, 0), steps=[step], now=T0)
    alerts = {a.id: a for a in log.alerts(AlertFilter(), before=None, limit=1000)}
    trips = {t.id: t for t in log.trips(TripFilter(), before=None, limit=1000)}
    assert len(alerts) == len(trips) == n
    events = EventLog(db).after(0, limit=5000)
    raised = [e.data for e in events if e.type == "alert.raised"]
    finished = [e.data for e in events if e.type == "trip.finished"]
    assert len(raised) == len(finished) == n
    for data in raised:
        assert alerts[data["alert_id"]].key == data["key"]
        assert alerts[data["alert_id"]].start_at == data["start_at"]
    for data in finished:
        assert trips[data["trip_id"]].start_at == data["start_at"]
    assert [d["start_at"] for d in raised] == sorted(d["start_at"] for d in raised)


def test_each_pass_stores_the_vehicles_states_as_the_worker_holds_them(
    world: tuple[StateDatabase, Path],
) -> None:
    """The states are written by one upsert of JSON text (decision 0037): the first pass
    inserts them, later ones replace them, and what is read back is what the worker
    holds in memory (a new owner starts from it). Written in every pass here
    (``flush_ms=0``); written behind, see the next test."""
    from gateway.core.fleet.state import rule_state_to_json, trip_state_to_json

    db, path = world
    store = open_store(path)
    samples = drive(VINS[0])
    now = [T0 + 3_000_000]
    w = worker(db, path, lambda: now[0], flush_ms=0)
    key = (VINS[0], 1)
    for lo, hi in ((0, 3), (3, 20), (20, len(samples))):  # inserted, then replaced twice
        commit(store, samples[lo:hi], now[0] - 5_000)
        while w.step():
            pass
        rule_state, trip_state, _ = w._states[key]
        stored = FleetLog(db).vin_states([key])[key]
        assert stored == (rule_state_to_json(rule_state), trip_state_to_json(trip_state))
        assert stored[0]["last_seq"] == samples[hi - 1].seq
    store.close()


def test_states_written_behind_are_written_when_due_and_at_stop(
    world: tuple[StateDatabase, Path],
) -> None:
    """Written behind (decision 0050): passes within ``flush_ms`` of the last write leave
    the stored states as they were and note themselves; the first pass past it writes
    what the worker holds, with the partition's cursor, and drops the notes; ``stop``
    writes the rest."""
    from gateway.core.fleet.state import rule_state_to_json, trip_state_to_json

    db, path = world
    store = open_store(path)
    samples = drive(VINS[0])
    now = [T0 + 3_000_000]
    w = worker(db, path, lambda: now[0], flush_ms=5_000)
    key = (VINS[0], 1)
    log = FleetLog(db)

    def held() -> tuple[dict[str, Any], dict[str, Any]]:
        rule_state, trip_state, _ = w._states[key]
        return rule_state_to_json(rule_state), trip_state_to_json(trip_state)

    def notes() -> int:
        return sum(len(n) for _, n in log.replay_plan(range(4)).values())

    commit(store, samples[:3], now[0] - 5_000)
    while w.step():
        pass
    assert log.vin_states([key]) == {}  # not yet written
    assert notes() >= 1
    commit(store, samples[3:20], now[0] - 5_000)
    now[0] += 1_000
    while w.step():
        pass
    assert log.vin_states([key]) == {}
    now[0] += 5_000  # due: the next pass writes
    commit(store, samples[20:30], now[0] - 5_000)
    while w.step():
        pass
    assert log.vin_states([key])[key] == held()
    assert notes() == 0
    plan = log.replay_plan(range(4))
    assert all(at == w._held[p] for p, (at, _) in plan.items() if p in w._held)
    commit(store, samples[30:], now[0])
    now[0] += 1_000
    while w.step():
        pass
    assert log.vin_states([key])[key] != held()  # behind again
    memory = held()
    w.stop()
    assert log.vin_states([key])[key] == memory
    assert notes() == 0
    store.close()


def test_the_states_are_written_a_partition_at_a_time_spread_over_the_interval(
    world: tuple[StateDatabase, Path],
) -> None:
    """Every ``flush_ms`` one transaction wrote every held partition's states, and the
    alerts of that pass (and of the passes queued behind it) waited for it: the alert
    latency's tail (decision 0057). Each partition is now written ``flush_ms`` after its
    own last write, at most the share of the partitions the time since the last pass
    stands for: here (4 partitions, a pass a second, 4 s) one a second, and still each
    about every 4 s."""
    db, path = world
    vins = [*VINS, "WFLEETW0000000004", "WFLEETW0000000005"]  # partitions 2, 0, 1, 3
    account = FleetLog(db).accounts_of([(VINS[0], 1)])[(VINS[0], 1)]
    for vin in vins[2:]:
        AccountRepository(db).provision_vehicle(
            vin=vin, account_id=account, label=None, mqtt_password_hash=None,
            provisioned_by=None, now=1,
        )  # fmt: skip
    store = open_store(path)
    log = FleetLog(db)
    now = [T0]
    w = worker(db, path, lambda: now[0], settle_ms=0, flush_ms=4_000)
    written_at: dict[int, list[int]] = {p: [] for p in range(4)}
    before = dict.fromkeys(range(4), (0, 0))  # no partition row yet: nothing written
    for second in range(1, 25):
        values = {SPEED: 50.0, LAT: 48.0 + second * 0.0001, LON: 11.5}
        commit(store, [Sample(vin, second, now[0] - 500, values) for vin in vins], now[0])
        while w.step():
            pass
        after = {p: at for p, (at, _) in log.replay_plan(range(4)).items()}
        wrote = [p for p in range(4) if after[p] != before[p]]
        assert len(wrote) <= 1, f"second {second}: partitions {wrote} written in one pass"
        for p in wrote:
            written_at[p].append(second)
        before = after
        now[0] += 1_000
    for p, seconds in written_at.items():
        assert seconds, f"partition {p} never written"
        assert seconds[0] <= 8  # the first write: at most twice the interval
        assert all(b - a <= 5 for a, b in itertools.pairwise(seconds)), seconds
    memory = {(vin, 1): w._states[(vin, 1)][0].last_seq for vin in vins}
    w.stop()
    stored = log.vin_states(list(memory))
    assert {k: v[0]["last_seq"] for k, v in stored.items()} == memory
    store.close()


def test_states_are_written_at_once_after_a_recompute_and_after_a_settings_change(
    world: tuple[StateDatabase, Path],
) -> None:
    """Between two writes a replay evaluates the noted passes again with the settings and
    the stored samples of its own time. A trip recompute reads every stored sample of its
    window (a replay would see later ones) and the settings may change: so a pass with a
    recompute writes its partition's states, and the first pass after a changed setting
    writes every partition's (decision 0050)."""
    db, path = world
    store = open_store(path)
    log = FleetLog(db)
    samples = drive(VINS[0])
    held_back = samples[15:40]
    now = [T0 + 3_600_000]
    w = worker(db, path, lambda: now[0], settle_ms=0, flush_ms=10**9)

    def notes() -> int:
        return sum(len(n) for _, n in log.replay_plan(range(4)).values())

    commit(store, [s for s in samples if s not in held_back], now[0])
    w.step()
    assert notes() > 0
    assert log.vin_states([(VINS[0], 1)]) == {}
    now[0] += 1_000
    commit(store, held_back, now[0])  # late: the trip detector recomputes
    w.step()
    assert (VINS[0], 1) in log.vin_states([(VINS[0], 1)])
    commit(store, drive(VINS[1])[:5], now[0])
    w.step()
    assert notes() > 0
    account = log.accounts_of([(VINS[1], 1)])[(VINS[1], 1)]
    FleetRepository(db).set_rule_settings(account, {"rules": {"speed_limit_kmh": 90.0}}, now=2)
    now[0] += 5_000  # the settings are read again
    commit(store, drive(VINS[1])[5:8], now[0])
    w.step()
    assert notes() == 0
    assert (VINS[1], 1) in log.vin_states([(VINS[1], 1)])
    store.close()


def test_a_vehicle_provisioned_after_its_first_samples_is_evaluated_from_then_on(
    world: tuple[StateDatabase, Path],
) -> None:
    """Samples of a VIN without an account only move the cursor; the worker keeps the
    accounts it found but asks again for one it did not (decision 0037), so once the
    vehicle is provisioned its next samples raise alerts."""
    db, path = world
    late_vin = "WFLEETW0000000009"
    store = open_store(path)
    now = [T0 + 3_000_000]
    w = worker(db, path, lambda: now[0])
    first = drive(late_vin)[:5]
    commit(store, first, now[0] - 5_000)
    assert w.step() > 0
    assert outcome(db)[0] == []
    org = AccountRepository(db).list_accounts()[0]
    AccountRepository(db).provision_vehicle(
        vin=late_vin, account_id=org.id, label=None, mqtt_password_hash=None,
        provisioned_by=None, now=2,
    )  # fmt: skip
    rest = drive(late_vin)[5:]
    store.commit(IngestBatch(received_at=now[0] - 4_000, samples=rest, events=[],
                             tenures={late_vin: Tenure(1, 0)}))  # fmt: skip
    now[0] += 10_000
    while w.step():
        pass
    kinds = {a[1] for a in outcome(db)[0] if a[0] == late_vin}
    assert {"overspeed", "harsh_braking"} <= kinds, outcome(db)[0]
    store.close()


def test_steps_that_wait_for_the_window_do_not_read_the_same_rows_again(
    world: tuple[StateDatabase, Path],
) -> None:
    """While a vehicle's first rows wait the reorder window, each step used to read and
    decode the whole batch again (ten steps a second); the rows read once are held and
    only what came after them is read (decision 0037). The outcome is the same."""
    db, path = world
    store = open_store(path)
    read: list[int] = []

    class Counting:
        def __init__(self) -> None:
            self._reader = open_store(path, readonly=True)

        def samples_after(self, cursor: int, *, limit: int) -> list[Any]:
            rows = self._reader.samples_after(cursor, limit=limit)
            read.append(len(rows))
            return rows

        def __getattr__(self, name: str) -> Any:
            return getattr(self._reader, name)

    now = [T0 + 3_000_000]
    w = RulesWorker(
        FleetLog(db),
        FleetRepository(db),
        lambda: Counting(),
        WorkerSettings(partitions=4, settle_ms=1_000, tick_ms=10**12),
        lambda: now[0],
    )
    samples = drive(VINS[0])
    commit(store, samples[:30], now[0])
    for _ in range(5):  # within the window: nothing evaluated, nothing read twice
        assert w.step() == 0
        now[0] += 100
    commit(store, samples[30:], now[0])
    now[0] += 2_000
    while w.step():
        pass
    assert sum(read) == len(samples), read
    alerts, trips = outcome(db)
    assert {a[1] for a in alerts} >= {"overspeed", "idling", "harsh_braking"}
    assert len(trips) == 1
    store.close()


def _chunked_drive(vins: list[str]) -> list[list[Sample]]:
    """Two vehicles' drives in chunks of a few samples each, one chunk per pass, with a
    late upload (samples 16-25 of the first vehicle come after the rest of its first 40):
    the passes of a live worker, a trip recompute among them."""
    first, second = drive(vins[0]), drive(vins[1])
    held_back = first[15:25]
    ordered = [s for s in first[:40] if s not in held_back] + held_back + first[40:]
    chunks = [
        [*ordered[i : i + 7], *second[i : i + 7]]
        for i in range(0, max(len(ordered), len(second)), 7)
    ]
    return [c for c in chunks if c]


def _run_with_a_crash(
    db: StateDatabase, tmp: Path, label: str, crash_after: int | None, stall: bool
) -> tuple[Any, ...]:
    """Every chunk committed, then the worker's passes until it has caught up. With
    ``crash_after``, the worker is gone after that many chunks (never released, its
    memory lost: killed) and a second one takes over once the leases lapsed; with
    ``stall``, the first one comes back after that (its lease lapsed meanwhile: a long
    pause) and both run, sharing the partitions."""
    from gateway.statedb.events import EventLog

    accounts = AccountRepository(db)
    org = accounts.create_account("organization", f"vans {label}", now=1)
    vins = [f"WFL{label}{n:013d}" for n in range(2)]
    for vin in vins:
        accounts.provision_vehicle(
            vin=vin, account_id=org.id, label=None, mqtt_password_hash=None,
            provisioned_by=None, now=1,
        )  # fmt: skip
    FleetRepository(db).set_rule_settings(org.id, {"rules": {"speed_limit_kmh": 100.0}}, now=1)
    path = tmp / f"telemetry-{label}.db"
    store = open_store(path)
    now = [T0 + 3_600_000]
    lease = 3_000
    first = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=lease)
    running = [first]
    for n, chunk in enumerate(_chunked_drive(vins)):
        commit(store, chunk, now[0])
        if n == crash_after:
            now[0] += lease + 1  # the first one's leases lapse
            second = worker(db, path, lambda: now[0], settle_ms=0, lease_ms=lease)
            running = [first, second] if stall else [second]
            while second.step():  # it takes over first
                pass
        for w in running:
            while w.step():
                pass
        now[0] += 1_000
    for _ in range(3):  # leases renewed and shared: whoever holds what catches up
        now[0] += lease
        for w in running:
            while w.step():
                pass
    store.close()
    rename = {vin: str(n) for n, vin in enumerate(vins)}
    alerts = sorted(
        (rename[a.vin], a.kind, a.key, a.severity, a.start_at, a.end_at, sorted(a.detail.items()))
        for a in FleetLog(db).alerts(AlertFilter(), before=None, limit=1000)
        if a.vin in rename
    )
    trips = sorted(
        (rename[t.vin], t.start_at, t.end_at, round(t.distance_m, 3), t.ended_by)
        for t in FleetLog(db).trips(TripFilter(), before=None, limit=1000)
        if t.vin in rename
    )
    events: dict[tuple[str, str, int], list[str]] = {}
    for e in EventLog(db).after(0, limit=100_000):
        if e.type.startswith("alert.") and e.data["vin"] in rename:
            key = (rename[e.data["vin"]], e.data["key"], e.data["start_at"])
            events.setdefault(key, []).append(e.type)
    return alerts, trips, sorted(events.items())


@pytest.mark.parametrize(
    ("crash_after", "stall"), [(0, False), (3, False), (6, False), (9, False), (4, True)]
)
def test_a_worker_that_dies_between_passes_loses_and_doubles_no_alert_or_trip(
    state_db_url: str, tmp_path: Path, crash_after: int, stall: bool
) -> None:
    """A worker killed between two passes (or one whose lease lapsed in a pause and that
    then shares the partitions with its successor) changes nothing: the same alerts (kind,
    key, severity, start, end, detail), trips and alert events (one ``alert.raised`` each,
    the same updates and ends) as an uninterrupted run, a late upload's trip recompute
    included. Each pass writes the states with its effects and its cursor in one
    transaction; keeping the states in memory and writing them behind (issue 13,
    decision 0040) must keep this test passing."""
    results = []
    # the uninterrupted run in a database of its own (the partitions' cursors are a
    # database's): a SQLite file, also when the run with the crash is on PostgreSQL
    for url, label, crash in (
        (f"sqlite:///{tmp_path / 'uninterrupted.db'}", "A", None),
        (state_db_url, "B", crash_after),
    ):
        db = StateDatabase(url)
        db.upgrade()
        try:
            results.append(_run_with_a_crash(db, tmp_path, label, crash, stall))
        finally:
            db.dispose()
    uninterrupted, crashed = results
    assert crashed == uninterrupted
    alerts, trips, events = uninterrupted
    assert {a[1] for a in alerts} >= {"overspeed", "harsh_braking", "low_soc", "idling"}
    assert len(trips) == 2  # one per vehicle: the late upload rejoined its trip
    assert all(kinds.count("alert.raised") == 1 for _, kinds in events)


def test_an_event_committed_before_another_but_received_later_is_not_skipped(
    world: tuple[StateDatabase, Path],
) -> None:
    """Two gateway processes: one stamps its batch's arrival, the other stamps a later one
    and commits first, so an earlier row id may carry a later ``received_at``. When a step
    read a full batch of samples it keeps the events received up to the last sample's
    arrival; a filter kept a later row and moved the cursor past an earlier one it had
    left out, which was never evaluated (its fault alert lost). The events kept are now
    a prefix by id: the later ones wait for the next step."""
    db, path = world
    store = open_store(path)
    t = T0 + 3_600_000
    vin = VINS[0]
    events = [
        (Event(vin, 1, t - 60_000, EventType.DTC_SET, code="P0100"), t + 10),  # received later
        (Event(vin, 2, t - 50_000, EventType.DTC_SET, code="P0200"), t),
    ]
    for event, received in events:  # committed in this order: ids 1 and 2
        commit(store, [], received, [event])
    samples = [Sample(vin, seq, t - 40_000 + seq * 1_000, {SPEED: 10.0}) for seq in range(1, 9)]
    commit(store, samples, t + 5)  # received between the two events
    now = [t + 60_000]
    w = worker(db, path, lambda: now[0], settle_ms=0, batch=4)  # 8 samples: full batches
    while w.step():
        pass
    faults = sorted(a[2] for a in outcome(db)[0] if a[1] == "fault_code")
    assert faults == ["fault:P0100", "fault:P0200"]
    store.close()


LATE_VIN = "WFLEETW0000000009"


def _replay_scenario(
    db: StateDatabase, path: Path, actions: list[tuple[str, Any]], crash_at: int, crash: bool
) -> tuple[Any, ...]:
    """``actions`` (commit samples / let time pass / provision the late VIN), each followed
    by the worker's passes; before action ``crash_at`` a lease's time passes. With
    ``crash`` the worker is gone then (never released, memory lost) and a new one takes
    over; its states are written behind every 20 minutes (decision 0050). Without, the
    reference: the states written in every pass (nothing to replay, also where a long
    wait lets its lease lapse). Ticks every minute."""
    from gateway.statedb.events import EventLog

    accounts = AccountRepository(db)
    org = accounts.create_account("organization", "vans", now=1)

    def provision(vin: str) -> None:
        accounts.provision_vehicle(
            vin=vin, account_id=org.id, label=None, mqtt_password_hash=None,
            provisioned_by=None, now=1,
        )  # fmt: skip

    for vin in VINS:
        provision(vin)
    FleetRepository(db).set_rule_settings(org.id, {"rules": {"speed_limit_kmh": 100.0}}, now=1)
    store = open_store(path)
    now = [T0]
    lease = 3_000

    def make() -> RulesWorker:
        return worker(db, path, lambda: now[0], settle_ms=0, lease_ms=lease, tick_ms=60_000,
                      flush_ms=20 * 60_000 if crash else 0)  # fmt: skip

    w = make()
    for n, (kind, arg) in enumerate(actions):
        if n == crash_at:
            now[0] += lease + 1
            if crash:
                w = make()
        if kind == "commit":
            commit(store, arg, now[0])
        elif kind == "wait":
            now[0] += arg
        else:
            provision(arg)
        while w.step():
            pass
        now[0] += 1_000
    store.close()
    alerts = sorted(
        (a.vin, a.kind, a.key, a.severity, a.start_at, a.end_at, sorted(a.detail.items()))
        for a in FleetLog(db).alerts(AlertFilter(), before=None, limit=1000)
    )
    events: dict[tuple[str, str, int], list[str]] = {}
    for e in EventLog(db).after(0, limit=100_000):
        if e.type.startswith("alert."):
            events.setdefault((e.data["vin"], e.data["key"], e.data["start_at"]), []).append(e.type)
    return alerts, sorted(events.items())


def _compare_replay(
    state_db_url: str, tmp_path: Path, actions: list[tuple[str, Any]], crash_at: int
) -> tuple[Any, ...]:
    results = []
    for url, label, crash in (
        (f"sqlite:///{tmp_path / 'uninterrupted.db'}", "A", False),
        (state_db_url, "B", True),
    ):
        db = StateDatabase(url)
        db.upgrade()
        try:
            telemetry = tmp_path / f"telemetry-{label}.db"
            results.append(_replay_scenario(db, telemetry, actions, crash_at, crash))
        finally:
            db.dispose()
    assert results[1] == results[0]
    return results[0]


def test_a_replayed_tick_reaches_the_vehicles_first_seen_since_the_states_were_written(
    state_db_url: str, tmp_path: Path
) -> None:
    """A pass's tick reaches the vehicles with a stored state and those whose state is
    only in memory (new since the last write); a replay must tick the same ones: else
    the second vehicle's ``offline`` alert, opened by a tick before the crash, is not in
    the replayed state and the successor raises it again."""
    first, second = drive(VINS[0])[:5], drive(VINS[1], t0=T0 + 21 * 60_000)[:10]
    actions: list[tuple[str, Any]] = [
        ("commit", first),
        ("wait", 21 * 60_000),  # due: the first vehicle's state written (and it is offline)
        ("commit", second[:5]),  # the second one's state only in memory
        ("wait", 17 * 60_000),  # a tick: the second one offline, not written
        ("wait", 60_000),  # the crash is before this
        ("commit", second[5:]),  # heard again: offline ends
    ]
    alerts, events = _compare_replay(state_db_url, tmp_path, actions, crash_at=4)
    offline = [a for a in alerts if a[1] == "offline"]
    assert [a[0] for a in offline].count(VINS[1]) == 1
    assert all(kinds.count("alert.raised") == 1 for _, kinds in events)


def test_a_replay_skips_the_rows_its_pass_skipped_of_a_vehicle_provisioned_since(
    state_db_url: str, tmp_path: Path
) -> None:
    """Rows of a vehicle without an account only move the cursor; if it is provisioned
    after that pass and before a replay, the replay must still skip them (the pass noted
    them), or the successor's state holds what nobody evaluated (its alerts would differ
    from an uninterrupted worker's)."""
    late = drive(LATE_VIN)
    actions: list[tuple[str, Any]] = [
        ("commit", [*drive(VINS[0])[:3], *late[:8]]),  # no account yet: 20 s at 130 km/h
        ("provision", LATE_VIN),
        ("commit", late[8:20]),  # the crash is before this: overspeed again, braking
        ("wait", 1_000),
    ]
    alerts, _ = _compare_replay(state_db_url, tmp_path, actions, crash_at=2)
    assert {a[1] for a in alerts if a[0] == LATE_VIN} >= {"overspeed", "harsh_braking"}
