"""Scenario files: parsing, the rendered stream (deterministic, scripted events on time,
store-and-forward gaps, valid payloads) and playing it to a real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gmqtt
import orjson
import pytest
from gmqtt.mqtt.constants import MQTTv50

from device_sim.city import DEPOT, MUNICH
from device_sim.credentials import UnitCredentials, VehicleCredential, write_credentials
from device_sim.scenario import (
    Action,
    Published,
    Scenario,
    ScenarioError,
    load,
    parse,
    play,
    render,
)
from device_sim.scenario import main as scenario_main
from device_sim.vehicle import Phase, SimulatedVehicle, VehicleProfile, make_vin
from gateway.broker import MosquittoProcess
from gateway.cli import main as telematics_main
from schemas.payloads import decode_event, decode_status, decode_telemetry, validate_signals
from schemas.topics import parse_topic
from tests.support.broker import ClosedBroker

EXAMPLE = Path(__file__).parent.parent / "device_sim" / "scenarios" / "munich-morning.toml"
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"

MINIMAL = """
seed = 7
start = "2026-11-27T08:00:00+01:00"
duration = "10m"
time_acceleration = 600
report_interval_s = 5

[[vehicles]]
count = 1
profile = "delivery_van"
name = "van"

[[vehicles]]
count = 1
profile = "electric_car"
name = "car"

[[events]]
at = "08:02"
vehicle = "van-1"
action = "depart"

[[events]]
at = "08:03:30"
vehicle = "car-1"
action = "go_offline"
duration = "2m"
"""


@functools.cache
def example() -> Scenario:
    return load(EXAMPLE)


@functools.cache
def example_stream() -> tuple[Published, ...]:
    return tuple(render(example()))


def at(clock: str) -> int:
    """ms of ``clock`` ("08:05") on the example's start date."""
    sc = example()
    when = dt.datetime.combine(sc.start.date(), dt.time.fromisoformat(clock), sc.start.tzinfo)
    return round(when.timestamp() * 1000)


def vin_of(name: str) -> str:
    return next(v.vin for v in example().fleet() if v.name == name)


def samples_of(stream: tuple[Published, ...], vin: str) -> list[dict[str, Any]]:
    """The vehicle's telemetry samples in publishing order (batches flattened)."""
    out: list[dict[str, Any]] = []
    for m in stream:
        if m.topic == f"v1/vehicles/{vin}/telemetry":
            try:
                body = orjson.loads(m.payload)
            except orjson.JSONDecodeError:
                continue  # an injected malformed_json fault (the group's `faults`)
            out.extend(body.get("samples", [body]))
    return out


# --- parsing ----------------------------------------------------------------------------------


def test_example_parses() -> None:
    sc = example()
    assert sc.seed == 20261127
    assert sc.start == dt.datetime(2026, 11, 27, 8, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert sc.duration_s == 7200.0
    assert sc.time_acceleration == 60.0
    fleet = sc.fleet()
    assert [v.name for v in fleet][:3] == ["car-1", "car-2", "car-3"]
    assert sum(v.profile is VehicleProfile.DELIVERY_VAN for v in fleet) == 12
    assert sum(v.profile is VehicleProfile.TRUCK for v in fleet) == 2
    assert len({v.vin for v in fleet}) == len(fleet) == 19
    assert fleet == example().fleet()  # VINs and start nodes are deterministic
    assert {v.vin for v in sc.with_seed(1).fleet()}.isdisjoint(v.vin for v in fleet)
    truck = next(v for v in fleet if v.name == "truck-2")
    assert truck.faults == "malformed_json=0.01"  # kept as written
    depart = next(e for e in sc.events if e.vehicle == "van-12")
    assert (depart.action, depart.at_ms) == (Action.DEPART, at("08:05"))
    tunnel = next(e for e in sc.events if e.vehicle == "van-3")
    assert tunnel.duration_s == 600.0


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("seed = 7\nsede = 3", "sede"),
        ('seed = "x"', "seed"),
        ('start = "2026-11-27T08:00:00"', "start"),
        ('duration = "2 days"', "duration"),
        ('[[vehicles]]\ncount = 1\nprofile = "bus"\nname = "bus"', "vehicles[3].profile"),
        ('[[vehicles]]\ncount = 0\nprofile = "truck"\nname = "t"', "vehicles[3].count"),
        (
            '[[vehicles]]\ncount = 1\nprofile = "truck"\nname = "t"\ncolour = 1',
            "vehicles[3].colour",
        ),
        ('[[vehicles]]\ncount = 1\nprofile = "truck"\nname = "van"', "vehicles[3].name"),
        ('[[events]]\nat = "08:04"\nvehicle = "van-9"\naction = "depart"', "events[3].vehicle"),
        ('[[events]]\nat = "08:04"\nvehicle = "van-1"\naction = "fly"', "events[3].action"),
        ('[[events]]\nat = "07:59"\nvehicle = "van-1"\naction = "depart"', "events[3].at"),
        ('[[events]]\nat = "8 o\'clock"\nvehicle = "van-1"\naction = "depart"', "events[3].at"),
        (
            '[[events]]\nat = "08:04"\nvehicle = "van-1"\naction = "depart"\nvalue = 3',
            "events[3].value",
        ),
        (
            '[[events]]\nat = "08:04"\nvehicle = "car-1"\naction = "low_charge"\nvalue = 120',
            "events[3].value",
        ),
        (
            '[[events]]\nat = "08:04"\nvehicle = "car-1"\naction = "go_to"\nvalue = "Atlantis"',
            "events[3].value",
        ),
    ],
)
def test_parse_errors_name_the_key(change: str, key: str) -> None:
    lines = MINIMAL.splitlines()
    first = change.split("\n", 1)[0]
    if first.startswith("[["):
        text = MINIMAL + "\n" + change + "\n"
    else:
        name = first.split("=")[0].strip()
        kept = [line for line in lines if not line.startswith(f"{name} =")]
        text = change + "\n" + "\n".join(kept)
    with pytest.raises(ScenarioError, match=f"<t>: {re.escape(key)}: "):
        parse(text, source="<t>")


def test_toml_syntax_errors_name_the_line() -> None:
    with pytest.raises(ScenarioError, match=r"<t>: invalid TOML: .*line 2"):
        parse("seed = 1\nstart = = 3\n", source="<t>")


def test_missing_keys_are_named() -> None:
    with pytest.raises(ScenarioError, match="<t>: vehicles: missing"):
        parse('seed = 1\nstart = 2026-11-27T08:00:00+01:00\nduration = "1h"', source="<t>")


# --- the rendered stream ----------------------------------------------------------------------


def test_same_file_and_seed_give_a_byte_identical_stream() -> None:
    first = example_stream()
    again = tuple(render(load(EXAMPLE)))
    assert first == again
    assert b"".join(m.payload for m in first) == b"".join(m.payload for m in again)
    until = at("08:10")
    other = tuple(render(example().with_seed(example().seed + 1), until=until))
    assert [m.payload for m in other] != [m.payload for m in first if m.sim_ms <= until]
    # stream order is simulated time
    assert [m.sim_ms for m in first] == sorted(m.sim_ms for m in first)


def test_one_vehicle_alone_gives_its_part_of_the_stream() -> None:
    vin = vin_of("van-3")
    alone = tuple(render(example(), until=at("08:45"), only={"van-3"}))
    assert alone == tuple(m for m in example_stream() if vin in m.topic and m.sim_ms <= at("08:45"))


def test_van_12_departs_at_0805() -> None:
    samples = samples_of(example_stream(), vin_of("van-12"))
    before = [s for s in samples if s["ts"] < at("08:05")]
    after = [s for s in samples if at("08:05") <= s["ts"] <= at("08:06")]
    assert len(before) == 60
    assert all(s["signals"][SPEED] == 0.0 for s in before)
    assert any(s["signals"][SPEED] > 0.0 for s in after)


def test_car_3_runs_low_on_charge_at_0900() -> None:
    samples = samples_of(example_stream(), vin_of("car-3"))
    just_before = [s for s in samples if s["ts"] < at("09:00")][-1]
    right_after = [s for s in samples if at("09:00") <= s["ts"] <= at("09:01")]
    assert just_before["signals"][SOC] > 20.0
    assert right_after
    assert all(s["signals"][SOC] < 10.0 for s in right_after)


def test_tunnel_gap_is_uploaded_as_ordered_batches() -> None:
    vin = vin_of("van-3")
    mine = [m for m in example_stream() if vin in m.topic]
    status = [(m.sim_ms, orjson.loads(m.payload)["state"]) for m in mine if "status" in m.topic]
    assert status == [
        (at("08:00"), "online"),
        (at("08:30"), "offline"),  # the Last Will
        (at("08:40"), "online"),
        (at("10:00"), "offline"),
    ]
    telemetry = [m for m in mine if m.topic.endswith("/telemetry")]
    # nothing published while offline
    assert not [m for m in telemetry if at("08:30") <= m.sim_ms < at("08:40")]
    batches = [m for m in telemetry if b'"samples"' in m.payload]
    assert [m.sim_ms for m in batches] == [at("08:40")] * 2
    buffered = [s for m in batches for s in orjson.loads(m.payload)["samples"]]
    # the samples taken 08:30 .. 08:39:55, with their own timestamps, 100 + 20
    assert [s["ts"] for s in buffered] == list(range(at("08:30"), at("08:40"), 5000))
    # consecutive seqs over the whole run: nothing lost, nothing duplicated, in order
    seqs = [s["seq"] for s in samples_of(example_stream(), vin)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) == 7200 // 5


def test_every_payload_of_the_example_decodes_cleanly_but_the_injected_faults() -> None:
    counts: dict[str, int] = defaultdict(int)
    faulty = {v.vin for v in example().fleet() if v.faults}
    assert faulty, "the example shows a group with faults"
    injected = 0
    for m in example_stream():
        parsed = parse_topic(m.topic)
        assert m.qos == 1
        channel = parsed.channel.value
        counts[channel] += 1
        if channel == "telemetry":
            decoded = decode_telemetry(m.payload, topic_vin=parsed.vin, now_ms=m.sim_ms)
            if parsed.vin in faulty and decoded.rejections:
                # the group's faults are malformed_json only (see the example file)
                assert [r.reason.value for r in decoded.rejections] == ["malformed_json"]
                injected += 1
                continue
            assert decoded.rejections == ()
            assert decoded.samples
        elif channel == "events":
            event = decode_event(m.payload, topic_vin=parsed.vin, now_ms=m.sim_ms)
            assert not hasattr(event, "reason"), event
        else:
            assert m.retain
            assert not hasattr(decode_status(m.payload, topic_vin=parsed.vin), "reason")
    assert counts["telemetry"] > 19 * 1400 - 200
    assert 3 <= injected <= 40  # about 1 % of ~1,400 reports of the faulty truck
    assert counts["events"] > 50  # ignitions at least
    assert counts["status"] == 19 * 2 + 2


def test_trucks_stay_within_the_catalog_and_drive() -> None:
    for name in ("truck-1", "truck-2"):
        samples = samples_of(example_stream(), vin_of(name))
        for s in samples:
            assert validate_signals(s["signals"]) == s["signals"]
        speeds = [s["signals"][SPEED] for s in samples]
        assert 20.0 < max(speeds) <= 80.0
        fuel = [s["signals"]["Vehicle.Powertrain.FuelSystem.RelativeLevel"] for s in samples]
        assert fuel[-1] <= fuel[0]


def test_dump_keeps_malformed_payloads_as_text() -> None:
    """The trucks' malformed_json fault: --dump writes such a payload as its text instead of
    crashing on it, every other one parsed."""
    lines = [json.loads(m.to_json()) for m in example_stream()]
    raw = [line for line in lines if "payload_raw" in line]
    assert raw, "munich-morning.toml has malformed_json faults"
    by_topic = {(m.sim_ms, m.topic): m.payload for m in example_stream()}
    for line in raw:
        assert "payload" not in line
        assert line["payload_raw"].encode() == by_topic[(line["sim_ms"], line["topic"])]
        with pytest.raises(json.JSONDecodeError):
            json.loads(line["payload_raw"])
    assert len(raw) + sum("payload" in line for line in lines) == len(lines)


def test_dump_of_the_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = asyncio.run(scenario_main([str(EXAMPLE), "--dump", "--until", "08:30"]))
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len([m for m in example_stream() if m.sim_ms <= at("08:30")])
    assert any("payload_raw" in line for line in lines)


def test_list_vins_names_what_to_provision(capsys: pytest.CaptureFixture[str]) -> None:
    assert asyncio.run(scenario_main([str(EXAMPLE), "--list-vins"])) == 0
    assert capsys.readouterr().out.split() == [v.vin for v in example().fleet()]
    assert asyncio.run(scenario_main([str(EXAMPLE), "--list-vins", "--only", "van-12"])) == 0
    assert capsys.readouterr().out.split() == [vin_of("van-12")]


def test_scenario_help_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        telematics_main(["sim", "scenario", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: telematics sim scenario ")
    assert "python -m" not in text
    for option in ("--credentials", "--list-vins", "--dump", "--mqtt-url"):
        assert option in text


def test_the_helps_examples_name_files_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    """Copied into the checkout, each example of ``--help`` finds its file (they named a
    bare ``munich-morning.toml``, which is not there)."""
    with pytest.raises(SystemExit):
        telematics_main(["sim", "scenario", "--help"])
    named = re.findall(r"(\S+\.toml)", capsys.readouterr().out)
    assert named
    checkout = Path(__file__).resolve().parent.parent
    assert [n for n in named if not (checkout / n).is_file()] == []


def test_a_scenario_file_that_is_not_there_names_the_shipped_ones(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert asyncio.run(scenario_main(["munich-morning.toml", "--dump"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: there is no scenario file munich-morning.toml; ")
    assert f"the shipped scenarios are in {EXAMPLE.parent.resolve()}/: " in err
    assert "munich-morning.toml" in err.split(": ")[-1]


def _minimal_file(tmp_path: Path) -> Path:
    path = tmp_path / "minimal.toml"
    path.write_text(MINIMAL)
    return path


def test_a_closed_broker_takes_the_scenario_with_its_credentials(
    closed_broker: ClosedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against telematics up's kind of broker: anonymous units are refused with a message
    that says how to provision them (no traceback); with the credentials file they play,
    the broker's URL taken from the file."""
    scenario_file = _minimal_file(tmp_path)
    vins = [v.vin for v in parse(MINIMAL).fleet()]
    url = closed_broker.broker.url
    assert asyncio.run(scenario_main([str(scenario_file), "--mqtt-url", url])) == 1
    err = capsys.readouterr().err
    assert f"refused unit {vins[0]}" in err
    assert "--list-vins" in err
    assert "--credentials FILE" in err
    assert "Traceback" not in err

    credentials = tmp_path / "units.json"
    write_credentials(
        credentials,
        UnitCredentials.of(
            [
                VehicleCredential(vin=vin, mqtt_username=vin, mqtt_password=password)
                for vin, password in ((v, closed_broker.add_vehicle(v)) for v in vins[:1])
            ],
            broker_url=url,
        ),
    )
    assert asyncio.run(scenario_main([str(scenario_file), "--credentials", str(credentials)])) == 2
    err = capsys.readouterr().err
    assert f"1 vehicle(s) of the scenario are not in {credentials}: {vins[1]}" in err
    assert "--list-vins" in err

    write_credentials(
        credentials,
        UnitCredentials.of(
            [
                VehicleCredential(vin=vin, mqtt_username=vin, mqtt_password=password)
                for vin, password in ((v, closed_broker.add_vehicle(v)) for v in vins)
            ],
            broker_url=url,
        ),
    )
    code = asyncio.run(scenario_main([str(scenario_file), "--credentials", str(credentials)]))
    assert code == 0
    assert f"published {len(list(render(parse(MINIMAL))))} messages" in capsys.readouterr().err


def test_a_credentials_file_without_a_broker_needs_mqtt_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vins = [v.vin for v in parse(MINIMAL).fleet()]
    credentials = tmp_path / "units.json"
    write_credentials(
        credentials,
        UnitCredentials.of(VehicleCredential(vin=v, mqtt_username=v) for v in vins),
    )
    argv = [str(_minimal_file(tmp_path)), "--credentials", str(credentials)]
    assert asyncio.run(scenario_main(argv)) == 2
    assert "--mqtt-url" in capsys.readouterr().err
    assert asyncio.run(scenario_main(argv[:1])) == 2
    assert "--mqtt-url" in capsys.readouterr().err


def test_dump_command_prints_the_stream(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "device_sim.scenario",
            str(EXAMPLE),
            "--dump",
            "--until",
            "08:01",
            "--only",
            "van-12",
        ],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout.decode()
    lines = [json.loads(line) for line in out.splitlines()]
    expected = list(render(example(), until=at("08:01"), only={"van-12"}))
    assert len(lines) == len(expected) == 1 + 13
    assert lines[0]["payload"] == {"state": "online", "ts": at("08:00")}


# --- playing to a real broker -----------------------------------------------------------------


@dataclass
class _Collector:
    want: int
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.messages.append((topic, payload))
        if len(self.messages) >= self.want:
            self.complete.set()
        return 0


def test_play_publishes_exactly_the_rendered_stream(mosquitto: MosquittoProcess) -> None:
    scenario = parse(MINIMAL, source="minimal")
    expected = list(render(scenario))
    assert any(b'"samples"' in m.payload for m in expected)  # the gap is in it

    async def run() -> tuple[list[tuple[str, bytes]], int]:
        collector = _Collector(len(expected))
        subscribed = asyncio.Event()
        observer = gmqtt.Client("observer", clean_session=True)
        observer.on_message = collector.on_message
        observer.on_subscribe = lambda *a: subscribed.set()
        await observer.connect(mosquitto.host, mosquitto.port, version=MQTTv50)
        try:
            observer.subscribe("v1/vehicles/#", qos=1)
            await asyncio.wait_for(subscribed.wait(), 10)
            progress: list[Published] = []
            count = await play(
                scenario,
                host=mosquitto.host,
                port=mosquitto.port,
                stop=asyncio.Event(),
                on_progress=progress.append,
            )
            assert progress == expected
            await asyncio.wait_for(collector.complete.wait(), 10)
            await asyncio.sleep(0.2)  # nothing more arrives
        finally:
            await observer.disconnect()
        return collector.messages, count

    received, count = asyncio.run(run())
    assert count == len(expected)
    # order is kept per vehicle (one connection each); across vehicles it may interleave
    by_vin: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for topic, payload in received:
        by_vin[parse_topic(topic).vin].append((topic, payload))
    want: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for m in expected:
        want[parse_topic(m.topic).vin].append((m.topic, m.payload))
    assert by_vin == want


# --- the vehicle model's scripted-event hooks -------------------------------------------------


def _vehicle(profile: VehicleProfile, seed: int = 5) -> SimulatedVehicle:
    return SimulatedVehicle(
        make_vin(seed), profile, MUNICH, random.Random(seed), DEPOT, start_ms=at("08:00")
    )


def _run(vehicle: SimulatedVehicle, seconds: float, *, until_moving: bool = False) -> bool:
    """Step in 1 s steps; True when the vehicle moved (stops early with ``until_moving``)."""
    moved = False
    for _ in range(round(seconds)):
        vehicle.step(1.0)
        moved = moved or vehicle.is_moving
        if moved and until_moving:
            break
    return moved


def test_hold_and_depart_now() -> None:
    van = _vehicle(VehicleProfile.DELIVERY_VAN)
    van.hold()
    assert not _run(van, 3600)
    assert van.phase is Phase.PARKED
    van.depart_now()
    assert not van.held
    assert _run(van, 30, until_moving=True)
    route = van.route
    van.depart_now()  # on the road already: drives on
    assert van.route == route
    assert van.phase in (Phase.DRIVING, Phase.WAITING)


def test_set_energy_level() -> None:
    car = _vehicle(VehicleProfile.ELECTRIC_CAR)
    car.hold()
    car.step(1.0)
    car.set_energy_level(7.0)
    assert car.signals()[SOC] == 7.0
    car.step(1.0)
    assert car.signals()["Vehicle.Powertrain.TractionBattery.Charging.IsCharging"] is True
    with pytest.raises(ValueError, match="within"):
        car.set_energy_level(101.0)
    suv = _vehicle(VehicleProfile.COMBUSTION_SUV)
    suv.set_energy_level(30.0)
    assert suv.signals()["Vehicle.Powertrain.FuelSystem.RelativeLevel"] == 30


def test_go_to_parks_at_the_destination() -> None:
    truck = _vehicle(VehicleProfile.TRUCK)
    truck.hold()
    truck.step(1.0)
    truck.go_to("Marienplatz")
    assert _run(truck, 60, until_moving=True)
    assert truck.route[-1] == "Marienplatz"
    for _ in range(3600):
        truck.step(1.0)
        if truck.phase is Phase.PARKED:
            break
    assert truck.phase is Phase.PARKED
    assert truck.route == ("Marienplatz",)
    assert truck.position() == (MUNICH.nodes["Marienplatz"].lat, MUNICH.nodes["Marienplatz"].lon)
    # on the road: it turns towards the new destination after the current street
    truck.go_to("Isartor")
    _run(truck, 900, until_moving=True)
    truck.go_to(DEPOT)
    assert truck.route[-1] == DEPOT
    with pytest.raises(ValueError, match="not a node"):
        truck.go_to("Atlantis")
