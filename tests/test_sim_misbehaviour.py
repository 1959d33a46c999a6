"""The simulator's scripted misbehaviour (issue 13, point 9): the seeded scenario
``device_sim/scenarios/misbehaving-van.toml`` played through a real Mosquitto, a real
gateway process and the rules worker of the API raises every kind of fleet alert.

The van leaves the depot out of hours and pulling away hard, speeds in the old town's
30 km/h zone, brakes hard, idles 22 minutes, raises and clears a trouble code, runs low on
fuel and goes silent; some of its messages are malformed (a seq gap); the electric car
runs low on charge. The scenario's 40 minutes play in 20 seconds (time acceleration 120):
the rules measure durations in the samples' time, except "offline", which is the gateway's
clock (2.5 s here). The depot and the zone are the demo installation's
(``gateway.installation.DEMO_GEOFENCES``); the scenario's start is in the past, which the
gateway takes (only the future is refused), so the same seed gives the same drive.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from pathlib import Path

import pytest

from device_sim.city import DEPOT, MUNICH
from device_sim.fleet import FleetSettings, build_unit_settings
from device_sim.misbehaviour import CYCLE_S, ROUND, Routine
from device_sim.scenario import ScenarioError, load, parse, play
from device_sim.unit import UnitSettings
from device_sim.vehicle import SimulatedVehicle, VehicleProfile
from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.core.fleet.geo import shape_from_geojson
from gateway.core.fleet.geofence import Geofence
from gateway.core.fleet.rules import AlertKind, RuleSettings, RuleState, evaluate
from gateway.core.fleet.signals import Sample, VehicleEvent
from gateway.core.fleet.state import window_from_json
from gateway.core.policy import AccountKind
from gateway.fleet.worker import WorkerSettings
from gateway.installation import DEMO_GEOFENCES, ensure_demo_geofences
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import StateDatabase
from gateway.statedb.fleets import FleetRepository
from schemas.payloads import EventType
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.waiting import wait_until

SCENARIO = Path(__file__).resolve().parent.parent / "device_sim/scenarios/misbehaving-van.toml"
#: sample-time thresholds as an organization sets them ("idles for 20 minutes"); the
#: gateway-clock ones short, for a scenario played 120 times faster than real time
RULES = {"idle_after_ms": 20 * 60_000, "offline_after_ms": 2_500, "seq_gap_grace_ms": 1_000}
#: the depot's hours: the scenario leaves it at 08:00 local time, out of them
DEPOT_HOURS = {"start": "20:00", "end": "21:00", "tz": "Europe/Berlin"}


def _play(mosquitto: MosquittoProcess) -> int:
    async def run() -> int:
        return await play(
            load(SCENARIO), host=mosquitto.host, port=mosquitto.port, stop=asyncio.Event()
        )

    return asyncio.run(run())


def _vins() -> list[str]:
    return [v.vin for v in load(SCENARIO).fleet()]


def test_the_misbehaving_van_raises_every_kind_of_alert(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    gateway = GatewayProcess(mosquitto, data, "gateway-1")
    worker = WorkerSettings(partitions=4, settle_ms=1_000, tick_ms=300, poll_s=0.05)
    with admin_client(ApiSettings(db_path=data / "telemetry.db", fleet_worker=worker)) as api:
        org = api.post("/v1/accounts", json={"kind": "organization", "name": "Vans"}).json()["id"]
        for vin in _vins():
            r = api.post("/v1/vehicles", json={"vin": vin, "account_id": org})
            assert r.status_code == 201, r.text
        r = api.put(f"/v1/accounts/{org}/rule-settings", json={"rules": RULES, "trips": {}})
        assert r.status_code == 200, r.text
        for fence in DEMO_GEOFENCES:
            body = {**fence, "properties": dict(fence["properties"])}
            if "active_window" in body["properties"]:
                body["properties"]["active_window"] = DEPOT_HOURS
            r = api.post(f"/v1/geofences?account_id={org}", json=body)
            assert r.status_code == 201, r.text
        gateway.start()
        try:
            published = _play(mosquitto)
            assert published > 4_000  # two units, a sample a simulated second for 40 minutes

            def kinds() -> Counter[str]:
                seen: Counter[str] = Counter()
                for vin in _vins():
                    page = api.get("/v1/alerts", params={"vin": vin, "limit": 1000}).json()
                    seen.update(a["kind"] for a in page["items"])
                return seen

            every = {k.value for k in AlertKind}
            wait_until(lambda: set(kinds()) >= every, timeout=30, what="every kind of alert")
        finally:
            gateway.stop()
        seen = kinds()
        assert set(seen) == every, seen
        van = _vins()[0]
        alerts = api.get("/v1/alerts", params={"vin": van, "limit": 1000}).json()["items"]
        by_kind = {a["kind"]: a for a in alerts}
        # the ones the script made: the zone's limit, the depot's hours, the scripted code
        assert by_kind["overspeed"]["detail"]["limit_kmh"] == 30.0
        assert by_kind["geofence_exit_out_of_hours"]["severity"] == "critical"
        fault = next(a for a in alerts if a["detail"].get("code") == "P0300")
        assert fault["end_at"] is not None  # set and cleared
        assert by_kind["harsh_braking"]["detail"]["mps2"] >= 4.0


# --- the pieces, without a broker -------------------------------------------------------------


def test_the_round_gives_each_step_once_in_order_and_repeats_hourly() -> None:
    routine = Routine()
    first = routine.due(1_000.0)
    assert [s.what for s in first] == ["to Marienplatz", "speeding for 8 minutes"]
    assert routine.due(1_059.0) == []
    assert [s.what for s in routine.due(1_060.0)] == ["trouble code P0300 for 10 minutes"]
    rest = routine.due(1_000.0 + CYCLE_S)  # a late call: everything missed, once
    assert [s.at_s for s in rest] == [s.at_s for s in ROUND[3:]] + [0.0, 0.0]
    assert routine.due(1_000.0 + CYCLE_S) == []


def _drive_the_round(minutes: int) -> tuple[list[Sample], list[VehicleEvent], list[float]]:
    """A demo van from the depot, its round applied as the live unit applies it (before
    each one-second report); the samples and events, and the unit's silences."""
    van = SimulatedVehicle(
        "WSMZZZ00000000003",
        VehicleProfile.DELIVERY_VAN,
        MUNICH,
        random.Random("demo:3"),
        DEPOT,
        start_ms=1_795_762_800_000,  # a Friday 08:00 in Munich
    )
    routine, samples, events, silences = Routine(), [], [], []
    for second in range(minutes * 60):
        van.step(1.0)
        for step in routine.due(van.sim_time_ms / 1000.0):
            if step.act is not None:
                step.act(van)
            if step.silence_s:
                silences.append(step.silence_s)
        samples.append(Sample(van.sim_time_ms, van.signals(), second, van.sim_time_ms))
        events += [
            VehicleEvent(e.ts, EventType(e.type), e.code, van.sim_time_ms)
            for e in van.pending_events()
        ]
    return samples, events, silences


def test_the_live_round_makes_the_van_break_every_rule_it_can() -> None:
    """The demo van's hour through the pure rules with the demo's depot and zone: every
    kind the van itself can raise (offline is the gateway clock's, seq gaps the link's)."""
    samples, events, silences = _drive_the_round(40)
    fences = tuple(
        Geofence(
            str(n),
            shape_from_geojson(f),
            f["properties"]["name"],
            f["properties"].get("speed_limit_kmh"),
            window_from_json(f["properties"].get("active_window")),
        )
        for n, f in enumerate(DEMO_GEOFENCES)
    )
    settings = RuleSettings(geofences=fences, idle_after_ms=20 * 60_000)
    state, kinds = RuleState(), Counter[str]()
    items: list[Sample | VehicleEvent] = sorted([*samples, *events], key=lambda i: i.ts_ms)
    for item in items:
        state, changes = evaluate(state, item, settings)
        kinds.update(c.alert.kind.value for c in changes if c.action == "opened")
    assert silences == [480.0]
    van_kinds = {k.value for k in AlertKind} - {"offline", "seq_gap", "low_soc"}
    van_kinds -= {"geofence_exit_out_of_hours"}  # Friday 08:00: the depot is open
    assert set(kinds) >= van_kinds, kinds
    assert next(e.code for e in events if e.type is EventType.DTC_SET) == "P0300"


def test_an_emergency_stop_is_harsh_and_an_idle_keeps_the_engine_running() -> None:
    samples, _, _ = _drive_the_round(12)
    speeds = [_number(s, "Vehicle.Speed") for s in samples]
    drops = [(a - b) / 3.6 for a, b in itertools.pairwise(speeds)]
    assert max(drops) >= 6.5  # m/s in one second: EMERGENCY_BRAKE_MPS2
    assert speeds[-1] == 0.0
    assert samples[-1].values["Vehicle.LowVoltageSystemState"] == "ON"
    assert min(_number(s, "Vehicle.Powertrain.FuelSystem.RelativeLevel") for s in samples) <= 6


def _number(sample: Sample, name: str) -> float:
    value = sample.values[name]
    assert isinstance(value, int | float)
    return float(value)


@pytest.mark.parametrize(
    ("event", "key", "says"),
    [
        ('action = "speed"\nvalue = 60', "events[1].duration", "needs one"),
        ('action = "speed"\nduration = "5m"', "events[1].value", "missing"),
        ('action = "speed"\nvalue = 900\nduration = "5m"', "events[1].value", "250"),
        ('action = "idle"', "events[1].duration", "needs one"),
        ('action = "fault"\nvalue = "nope"', "events[1].value", "P0300"),
        ('action = "brake_hard"\nduration = "1m"', "events[1].duration", "take one"),
        ('action = "go_silent"', "events[1].duration", "needs one"),
    ],
)
def test_misbehaviour_in_a_scenario_file_is_checked(event: str, key: str, says: str) -> None:
    text = (
        'seed = 1\nstart = 2026-11-27T08:00:00+01:00\nduration = "1h"\n'
        '[[vehicles]]\ncount = 1\nprofile = "delivery_van"\nname = "van"\n'
        f'[[events]]\nat = "08:10"\nvehicle = "van-1"\n{event}\n'
    )
    with pytest.raises(ScenarioError, match=says) as raised:
        parse(text, source="x.toml")
    assert key in str(raised.value)


def test_only_the_delivery_vans_of_a_demo_fleet_misbehave() -> None:
    settings = FleetSettings(count=6, misbehave=True)
    units = build_unit_settings(settings, UnitSettings())
    assert [u.misbehave for u in units] == [False, False, True, False, False, True]
    assert not any(u.misbehave for u in build_unit_settings(FleetSettings(count=6), UnitSettings()))


def test_the_demo_organization_gets_its_depot_and_zone_once(tmp_path: Path) -> None:
    db = StateDatabase(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade()
    try:
        accounts, fleets, audit = AccountRepository(db), FleetRepository(db), AuditLog(db)
        demo = accounts.create_account(AccountKind.ORGANIZATION, "Demo Fleet", now=1)
        assert ensure_demo_geofences(fleets, audit, demo.id, now=2) == 2
        assert ensure_demo_geofences(fleets, audit, demo.id, now=3) == 0  # a restart
        fences = {f.name: f for f in fleets.list_geofences(account_id=demo.id, after=None, limit=9)}
        assert fences["City centre (Altstadt)"].speed_limit_kmh == 30
        assert fences["Depot Großmarkthalle"].active_window is not None
        # deleted by the fleet manager: back at the next start
        fleets.delete_geofence(fences["City centre (Altstadt)"].id)
        assert ensure_demo_geofences(fleets, audit, demo.id, now=4) == 1
    finally:
        db.dispose()
