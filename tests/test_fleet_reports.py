"""Fleet reports over stored trips and alerts, through the API (SQLite and PostgreSQL): the
daily rollup the worker keeps equals the trips it sums, also after a recompute replaced
some; per-vehicle, utilization and fault-code reports add up to their trips and alerts,
over a range that starts and ends mid-day (edge days from the trips, the rest from the
rollup); another organization gets 404; a range that ends before it starts is 422 for
reports and for the alert and trip lists alike."""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.api import ApiSettings
from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.fleet_log import (
    DAY_MS,
    AlertWrite,
    FleetLog,
    TripFilter,
    TripWrite,
    VinStep,
)
from gateway.statedb.fleets import FleetRepository
from gateway.statedb.models import FleetAlertDayRow, FleetAlertRow, FleetTripDayRow, VehicleRow
from gateway.store import open_store
from tests.support.api import admin_client

D0 = 20_400  # the first day of the trips (days since the epoch)
VINS = ("WVWZZZ1KZAW000001", "WVWZZZ1KZAW000002", "WBAXX11020L000003")
OTHER_VIN = "WVWZZZ1KZAW000009"  # the other organization's
PASSWORD = "reports-password-1"


def _trip(start: int, rng: random.Random) -> TripWrite:
    end = start + rng.randint(60_000, 5_400_000)
    return TripWrite(start, end, (11.5, 48.1), (11.6, 48.2), rng.uniform(100, 90_000),
                     rng.uniform(20, 140), 40.0, rng.uniform(0, 5), None, "ignition_off",
                     False, False)  # fmt: skip


@dataclass
class World:
    api: TestClient
    db: StateDatabase
    org: int
    other: int
    trips: dict[str, list[TripWrite]]
    faults: list[tuple[str, str]]

    def commit(self, steps: list[VinStep], cursor: int) -> None:
        log = FleetLog(self.db)
        log.take_partitions("test", 1, now=1, ttl_ms=10**12)
        log.commit_partition(0, "test", read_from=(cursor, 0), cursor=(cursor + 1, 0),
                             steps=steps, now=2)  # fmt: skip


def _provision(accounts: AccountRepository, account: int, vin: str) -> None:
    accounts.provision_vehicle(
        vin=vin, account_id=account, label=None, mqtt_password_hash=None, provisioned_by=None,
        now=1,
    )  # fmt: skip


@pytest.fixture
def world(state_db_url: str, tmp_path: Path) -> Iterator[World]:
    open_store(tmp_path / "telemetry.db").close()
    settings = ApiSettings(db_path=tmp_path / "telemetry.db", state_db_url=state_db_url,
                           fleet_worker=None)  # fmt: skip
    with admin_client(settings) as api:
        db = StateDatabase(state_db_url)
        accounts = AccountRepository(db)
        org = accounts.create_account("organization", "vans", now=1).id
        other = accounts.create_account("organization", "trucks", now=1).id
        for vin in VINS:
            _provision(accounts, org, vin)
        _provision(accounts, other, OTHER_VIN)
        rng = random.Random(5)
        trips: dict[str, list[TripWrite]] = {}
        steps = {
            vin: VinStep(vin, 1, other if vin == OTHER_VIN else org, {}, {})
            for vin in (*VINS, OTHER_VIN)
        }
        for vin in (*VINS[:2], OTHER_VIN):  # VINS[2] never drives: unused in utilization
            trips[vin] = [_trip((D0 + d) * DAY_MS + h * 3_600_000 + rng.randint(0, 3_000_000), rng)
                          for d in range(6) for h in (1, 9, 17, 22)]  # fmt: skip
            steps[vin].trips.extend(trips[vin])
        faults = [(VINS[0], "P0420"), (VINS[1], "P0420"), (VINS[1], "P0300"), (VINS[2], "P0420")]
        for n, (vin, code) in enumerate(faults):
            at = (D0 + 2) * DAY_MS + n * 1000
            alert = AlertWrite("opened", "fault_code", f"fault:{code}", "warning", at, at, {})
            steps[vin].alerts.append(alert)
        idle = (D0 + 3) * DAY_MS + 50_000
        steps[VINS[0]].alerts.append(
            AlertWrite("opened", "idling", "idling", "warning", idle, idle + 420_000, {})
        )
        w = World(api, db, org, other, trips, faults)
        w.commit(list(steps.values()), 0)
        try:
            yield w
        finally:
            db.dispose()


def _manager(w: World, account: int, name: str) -> dict[str, str]:
    email = f"manager-{name}@example.com"
    r = w.api.post("/v1/users", json={"email": email, "name": "m", "role": "fleet_manager",
                                      "account_id": account, "password": PASSWORD})  # fmt: skip
    assert r.status_code == 201, r.text
    token = w.api.post(
        "/v1/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def _rollup(w: World) -> list[tuple[Any, ...]]:
    from sqlalchemy import select

    r = FleetTripDayRow
    with w.db.read() as session:
        rows = session.execute(select(r.vin, r.day, r.trips, r.duration_ms, r.distance_m))
        return sorted((v, d, n, int(t), round(m, 6)) for v, d, n, t, m in rows)


def _sums(trips: dict[str, list[TripWrite]]) -> list[tuple[Any, ...]]:
    days: dict[tuple[str, int], list[float]] = {}
    for vin, ts in trips.items():
        for t in ts:
            s = days.setdefault((vin, t.start_at // DAY_MS), [0, 0, 0.0])
            s[0], s[1], s[2] = s[0] + 1, s[1] + t.end_at - t.start_at, s[2] + t.distance_m
    return sorted((v, d, int(n), int(t), round(m, 6)) for (v, d), (n, t, m) in days.items())


def test_the_daily_rollup_equals_its_trips_also_after_a_recompute(world: World) -> None:
    assert _rollup(world) == _sums(world.trips)
    # a recompute replaces VINS[0]'s trips from day 3 on: fewer, other ones
    rng = random.Random(9)
    cut = (D0 + 3) * DAY_MS
    kept = [t for t in world.trips[VINS[0]] if t.start_at < cut]
    new = [_trip(cut + 5 * 3_600_000, rng), _trip(cut + 2 * DAY_MS + 60_000, rng)]
    world.trips[VINS[0]] = kept + new
    world.commit([VinStep(VINS[0], 1, world.org, {}, {}, trips=new, replace_from=cut)], 1)
    assert _rollup(world) == _sums(world.trips)


def _window() -> dict[str, int]:
    """Mid-day to mid-day: the first and last day are partial."""
    return {"start": (D0 + 1) * DAY_MS + 12 * 3_600_000, "end": (D0 + 5) * DAY_MS + 8 * 3_600_000}


def _in_window(trips: list[TripWrite]) -> list[TripWrite]:
    w = _window()
    return [t for t in trips if w["start"] <= t.start_at < w["end"]]


def test_vehicle_report_totals_are_the_sum_of_the_trips_in_the_range(world: World) -> None:
    r = world.api.get("/v1/reports/vehicles", params={**_window(), "account_id": world.org})
    assert r.status_code == 200, r.text
    body = r.json()
    totals = {t["key"]: t for t in body["totals"]}
    assert set(totals) == {VINS[0], VINS[1], VINS[2]}  # VINS[2]: its fault-code alert
    for vin in VINS[:2]:
        trips = _in_window(world.trips[vin])
        assert totals[vin]["trips"] == len(trips)
        assert totals[vin]["driving_ms"] == sum(t.end_at - t.start_at for t in trips)
        assert totals[vin]["distance_m"] == pytest.approx(sum(t.distance_m for t in trips))
        assert totals[vin]["max_speed_kmh"] == pytest.approx(
            max(t.max_speed_kmh or 0 for t in trips)
        )
        rows = [x for x in body["rows"] if x["key"] == vin]
        assert sum(x["trips"] for x in rows) == len(trips)
    assert totals[VINS[0]]["idle_ms"] == 420_000
    assert totals[VINS[0]]["alerts"] == 2  # its fault code and its idling
    csv_text = world.api.get(
        "/v1/reports/vehicles", params={**_window(), "account_id": world.org, "format": "csv"}
    ).text
    lines = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(lines) == len(body["rows"]) + len(body["totals"])
    assert {x["key"] for x in lines if x["day"] == ""} == set(totals)


def test_utilization_lists_every_vehicle_and_adds_up_to_the_trips(world: World) -> None:
    params = {**_window(), "account_id": world.org}
    body = world.api.get("/v1/reports/utilization", params=params).json()
    by_vin = {v["vin"]: v for v in body["vehicles"]}
    assert list(by_vin) == sorted(VINS)  # the one that never drove is there, all zeros
    assert by_vin[VINS[2]]["trips"] == by_vin[VINS[2]]["days_used"] == 0
    span = _window()["end"] - _window()["start"]
    for vin in VINS[:2]:
        trips = _in_window(world.trips[vin])
        driving = sum(t.end_at - t.start_at for t in trips)
        assert by_vin[vin]["trips"] == len(trips)
        assert by_vin[vin]["days_used"] == len({t.start_at // DAY_MS for t in trips})
        assert by_vin[vin]["driving_ms"] == driving
        assert by_vin[vin]["driving_share"] == pytest.approx(driving / span)
    total = body["total"]
    assert total["vin"] is None
    assert (total["vehicles"], total["vehicles_used"]) == (3, 2)
    assert total["trips"] == sum(v["trips"] for v in body["vehicles"])
    assert total["distance_m"] == pytest.approx(sum(v["distance_m"] for v in body["vehicles"]))
    assert total["driving_share"] == pytest.approx(total["driving_ms"] / (3 * span))
    rows = list(csv.DictReader(io.StringIO(
        world.api.get("/v1/reports/utilization", params={**params, "format": "csv"}).text
    )))  # fmt: skip
    assert [x["vin"] for x in rows] == [*sorted(VINS), ""]


def test_fault_codes_by_model_count_vehicles_and_occurrences(world: World) -> None:
    body = world.api.get("/v1/reports/faults", params={**_window(), "account_id": world.org})
    rows = [(x["model"], x["code"], x["vehicles"], x["occurrences"]) for x in body.json()["rows"]]
    assert rows == [
        ("WBAXX110", "P0420", 1, 1),
        ("WVWZZZ1K", "P0300", 1, 1),
        ("WVWZZZ1K", "P0420", 2, 2),
    ]


def test_another_organization_gets_404_and_a_backwards_range_is_422(world: World) -> None:
    theirs = _manager(world, world.other, "trucks")
    for path in ("vehicles", "utilization", "faults", "drivers"):
        r = world.api.get(f"/v1/reports/{path}", params={**_window(), "account_id": world.org},
                          headers=theirs)  # fmt: skip
        assert r.status_code == 404, (path, r.text)
    r = world.api.get("/v1/reports/utilization", params={**_window(), "vin": VINS[0]},
                      headers=theirs)  # fmt: skip
    assert r.status_code == 404, r.text
    # their own report has only their own truck
    own = world.api.get("/v1/reports/utilization", params=_window(), headers=theirs).json()
    assert [v["vin"] for v in own["vehicles"]] == [OTHER_VIN]
    backwards = {"start": _window()["end"], "end": _window()["start"]}
    for path in ("/v1/alerts", "/v1/trips", "/v1/reports/vehicles", "/v1/reports/utilization",
                 "/v1/reports/faults"):  # fmt: skip
        r = world.api.get(path, params={**backwards, "account_id": world.org})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["error"]["details"][0]["type"] == "invalid_range", (path, r.text)


def test_the_report_reads_the_same_as_summing_the_trips_directly(world: World) -> None:
    """The rollup path (whole days) and the trips path (edge days) agree with a sum of
    the trips over the same range by the database alone."""
    log = FleetLog(world.db)
    w = _window()
    f = TripFilter(world.org, None, None, None, w["start"], w["end"])
    via_report = sorted(
        (k, d, int(n), int(t)) for k, d, n, t, *_ in log.trip_days(f, by_driver=False)
    )
    direct = sorted(
        (k, d, int(n), int(t)) for k, d, n, t, *_ in log._trip_sums(f, False, w["start"], w["end"])
    )
    assert via_report == direct
    assert via_report


# --- the daily rollup of alerts (migration 0015, decision 0030) ----------------------------


def _alert_rollup(w: World) -> list[tuple[Any, ...]]:
    """The rollup's rows: (account, vin, tenure, day, driver or -1, alerts, idle ms)."""
    r = FleetAlertDayRow
    with w.db.read() as session:
        rows = session.execute(
            select(r.account_id, r.vin, r.tenure, r.day, r.driver_id, r.alerts, r.idle_ms)
        )
        return sorted((a, v, t, d, -1 if i is None else i, n, idle)
                      for a, v, t, d, i, n, idle in rows)  # fmt: skip


def _alert_sums(w: World) -> list[tuple[Any, ...]]:
    """The same summed here from every stored alert: one per alert, its idle time its
    duration if it is an ended idling alert."""
    a = FleetAlertRow
    days: dict[tuple[Any, ...], list[int]] = {}
    with w.db.read() as session:
        for row in session.scalars(select(a)):
            key = (row.account_id, row.vin, row.tenure, row.start_at // DAY_MS,
                   -1 if row.driver_id is None else row.driver_id)  # fmt: skip
            s = days.setdefault(key, [0, 0])
            s[0] += 1
            if row.kind == "idling" and row.end_at is not None:
                s[1] += row.end_at - row.start_at
    return sorted((*k, n, idle) for k, (n, idle) in days.items())


def _opened(kind: str, key: str, at: int, end: int | None = None) -> AlertWrite:
    return AlertWrite("opened", kind, key, "warning", at, end, {})


def _closed(kind: str, key: str, at: int, end: int) -> AlertWrite:
    return AlertWrite("closed", kind, key, "warning", at, end, {})


def test_the_alert_rollup_follows_alerts_that_end_later_arrive_late_or_have_a_driver(
    world: World,
) -> None:
    w = world
    assert _alert_rollup(w) == _alert_sums(w) != []
    driver = FleetRepository(w.db).create_driver(account_id=w.org, name="Ada", user_id=None,
                                                 now=1)  # fmt: skip
    FleetRepository(w.db).assign(driver.id, VINS[1], start_at=(D0 + 4) * DAY_MS, end_at=None)
    idle_at = (D0 + 4) * DAY_MS + 3_600_000
    step = VinStep(VINS[1], 1, w.org, {}, {}, alerts=[_opened("idling", "idling", idle_at)])
    w.commit([step], 1)  # open: counted, no idle time yet
    assert _alert_rollup(w) == _alert_sums(w)
    day = (w.org, VINS[1], 1, D0 + 4, driver.id)
    assert [r[5:] for r in _alert_rollup(w) if r[:5] == day] == [(1, 0)]
    ended = [_closed("idling", "idling", idle_at, idle_at + 1_500_000)]
    w.commit([VinStep(VINS[1], 1, w.org, {}, {}, alerts=ended)], 2)  # ends in a later pass
    assert [r[5:] for r in _alert_rollup(w) if r[:5] == day] == [(1, 1_500_000)]
    late = (D0 + 1) * DAY_MS + 7_200_000  # a day whose row exists already
    w.commit([VinStep(VINS[0], 1, w.org, {}, {}, alerts=[
        _opened("idling", "idling", late, late + 90_000),  # an instant: ended as it opens
        _opened("overspeed", "overspeed", late + 100_000),
        _closed("overspeed", "overspeed", late + 100_000, late + 160_000),  # same pass
        _opened("harsh_braking", "harsh_braking", (D0 - 3) * DAY_MS),  # before all others
    ])], 3)  # fmt: skip
    assert _alert_rollup(w) == _alert_sums(w)
    # a recompute of trips leaves the alerts' rollup as it was, the trips' follows its trips
    before = _alert_rollup(w)
    cut = (D0 + 2) * DAY_MS
    new = [_trip(cut + 3_600_000, random.Random(3))]
    w.trips[VINS[0]] = [t for t in w.trips[VINS[0]] if t.start_at < cut] + new
    w.commit([VinStep(VINS[0], 1, w.org, {}, {}, trips=new, replace_from=cut)], 4)
    assert _alert_rollup(w) == before == _alert_sums(w)
    assert _rollup(w) == _sums(w.trips)
    # the driver's report: the alert and its idle time, from the rollup (a whole-day range)
    whole = {"start": D0 * DAY_MS, "end": (D0 + 6) * DAY_MS, "account_id": w.org}
    body = w.api.get("/v1/reports/drivers", params={**whole, "driver_id": driver.id}).json()
    assert [(t["key"], t["alerts"], t["idle_ms"]) for t in body["totals"]] == [
        (str(driver.id), 1, 1_500_000)
    ]


def test_the_reports_alerts_are_the_sum_of_their_alerts_over_many_passes(world: World) -> None:
    """Random passes of alerts opened, updated, ended (in the same or a later pass, or as
    instants) on random days, late ones included: the rollup is the sum of the alerts, and
    a report over whole and partial days counts every alert and its idle time."""
    w, rng = world, random.Random(11)
    open_alerts: dict[str, tuple[str, str, int]] = {}  # key: (vin, kind, start)
    for n in range(12):
        steps = {vin: VinStep(vin, 1, w.org, {}, {}) for vin in VINS}
        for k in range(rng.randint(1, 8)):
            vin = rng.choice(VINS)
            at = (D0 + rng.randint(0, 6)) * DAY_MS + rng.randint(0, DAY_MS - 1)
            kind, key = rng.choice(["idling", "overspeed"]), f"k{n}-{k}"
            if rng.random() < 0.3:
                steps[vin].alerts.append(_opened(kind, key, at, at + rng.randint(0, 10**6)))
            else:
                steps[vin].alerts.append(_opened(kind, key, at))
                open_alerts[key] = (vin, kind, at)
        for key, (vin, kind, at) in list(open_alerts.items()):
            if rng.random() < 0.4:  # ended in this pass (maybe the one that opened it)
                end = at + rng.randint(0, 2 * 10**6)
                steps[vin].alerts.append(_closed(kind, key, at, end))
                del open_alerts[key]
            elif rng.random() < 0.3:
                steps[vin].alerts.append(AlertWrite("updated", kind, key, "critical", at,
                                                    None, {"n": n}))  # fmt: skip
        w.commit([s for s in steps.values() if s.alerts], n + 1)
        assert _alert_rollup(w) == _alert_sums(w), n
    with w.db.read() as session:
        alerts = list(
            session.scalars(select(FleetAlertRow).where(FleetAlertRow.account_id == w.org))
        )
    for window in (_window(), {"start": D0 * DAY_MS, "end": (D0 + 7) * DAY_MS}):
        body = w.api.get("/v1/reports/vehicles", params={**window, "account_id": w.org}).json()
        totals = {t["key"]: (t["alerts"], t["idle_ms"]) for t in body["totals"]}
        for vin in VINS:
            mine = [a for a in alerts
                    if a.vin == vin and window["start"] <= a.start_at < window["end"]]  # fmt: skip
            idle = sum(a.end_at - a.start_at for a in mine
                       if a.kind == "idling" and a.end_at is not None)  # fmt: skip
            assert totals[vin] == (len(mine), idle), (vin, window)
            # one vehicle's report (its (vin, tenure) as an IN list): the same total
            one = w.api.get("/v1/reports/vehicles", params={**window, "vin": vin}).json()
            assert [(t["alerts"], t["idle_ms"]) for t in one["totals"]] == [totals[vin]]


def test_migration_0015_rolls_up_the_alerts_stored_before_it(world: World) -> None:
    from alembic import command

    from gateway.statedb.database import alembic_config

    kept = _alert_rollup(world)
    with world.db.engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0014_service_partners")
    world.db.upgrade()
    assert _alert_rollup(world) == kept == _alert_sums(world) != []


def test_a_report_names_each_vehicle_and_driver_next_to_its_key(world: World) -> None:
    """Found by a fleet manager's trial: the driver report's CSV said ``1`` and ``2``, the
    vehicle report only VINs; each line now has the vehicle's label or the driver's name
    (in CSV as text no spreadsheet runs: a name is someone's input), and nobody else's."""
    w = world
    with w.db.write() as session:
        for vin, label in ((VINS[0], "Van 1"), (VINS[1], "=2+3"), (OTHER_VIN, "Truck")):
            row = session.get(VehicleRow, vin)
            assert row is not None
            row.label = label
    params = {**_window(), "account_id": w.org}
    body = w.api.get("/v1/reports/vehicles", params=params).json()
    names = {t["key"]: t["name"] for t in body["totals"]}
    assert names == {VINS[0]: "Van 1", VINS[1]: "=2+3", VINS[2]: None}
    assert {r["name"] for r in body["rows"] if r["key"] == VINS[0]} == {"Van 1"}
    one = w.api.get("/v1/reports/vehicles", params={**_window(), "vin": VINS[0]}).json()
    assert [t["name"] for t in one["totals"]] == ["Van 1"]
    text = w.api.get("/v1/reports/vehicles", params={**params, "format": "csv"}).text
    lines = list(csv.DictReader(io.StringIO(text)))
    assert {x["key"]: x["name"] for x in lines if x["day"] == ""} == {
        VINS[0]: "Van 1", VINS[1]: "'=2+3", VINS[2]: "",
    }  # fmt: skip
    # the drivers' report: the driver's name, not only the id
    repo = FleetRepository(w.db)
    ada = repo.create_driver(account_id=w.org, name="Ada", user_id=None, now=1)
    repo.assign(ada.id, VINS[1], start_at=D0 * DAY_MS, end_at=None)
    idle_at = (D0 + 2) * DAY_MS + 3_600_000
    w.commit([VinStep(VINS[1], 1, w.org, {}, {}, alerts=[_opened("idling", "idling", idle_at)])], 1)
    drivers = w.api.get("/v1/reports/drivers", params=params).json()
    assert [(t["key"], t["name"]) for t in drivers["totals"]] == [(str(ada.id), "Ada")]
    text = w.api.get("/v1/reports/drivers", params={**params, "format": "csv"}).text
    assert text.splitlines()[0].startswith("key,name,day,")
    assert f"\r\n{ada.id},Ada," in text
