"""Remote commands in the simulator: the vehicle's actuators (pure, simulated time) and the
units answering commands over a real private Mosquitto, as firmware would.

The broker tests publish commands exactly as the gateway does (QoS 1, MQTT 5 response topic,
correlation data and message expiry) with a plain gmqtt client, and watch the answers and
the telemetry with another. "The next telemetry" after a command is the first sample the
unit took after it carried the command out: the test's ``on_sample`` hook records the unit's
command counters with every sample, so this needs no guessing from arrival times. Nothing
sleeps to wait for a condition: :func:`until` polls with a deadline.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from device_sim.city import DEPOT
from device_sim.fleet import (
    CommandRole,
    FleetSettings,
    build_parser,
    build_unit_settings,
    command_roles,
)
from device_sim.unit import UnitSettings, wall_clock_ms
from device_sim.vehicle import CommandRefused, Phase, SimulatedVehicle, VehicleProfile
from gateway.broker import MosquittoProcess
from schemas import Channel, Sample, topic_for
from schemas.commands import (
    COMMAND_SPECS,
    CommandType,
    ParamValue,
    ResultReason,
    ResultStatus,
    command_result_topic,
    command_topic,
    is_confirmed_by,
)
from schemas.payloads import SignalValue, validate_signals
from tests.support.sim_commands import (
    OTHER_VIN,
    VIN,
    C,
    Gateway,
    Taken,
    Watcher,
    answered,
    car,
    parked,
    start_unit,
)
from tests.support.unit_harness import run, until
from tests.support.unit_harness import settings as unit_settings

S = ResultStatus
WINTER_MS = 1_736_924_400_000

LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"
WINDOW = "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"
CABIN = "Vehicle.Cabin.HVAC.AmbientAirTemperature"
SET_POINT = "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"
FAN = "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"
HORN = "Vehicle.Body.Horn.IsActive"
HAZARD = "Vehicle.Body.Lights.Hazard.IsSignaling"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
CHARGING = "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"
LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
SPEED = "Vehicle.Speed"
IS_MOVING = "Vehicle.IsMoving"
DTC_LIST = "Vehicle.Diagnostics.DTCList"


def num(signals: Mapping[str, SignalValue], path: str) -> float:
    value = signals[path]
    assert isinstance(value, int | float)
    assert not isinstance(value, bool)
    return float(value)


def refused(action: Callable[[], object]) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        action()
    return info.value


def drive_until(
    vehicle: SimulatedVehicle, condition: Callable[[SimulatedVehicle], bool], *, limit_s: int
) -> None:
    for _ in range(limit_s):
        if condition(vehicle):
            return
        vehicle.step(1.0)
    pytest.fail(f"condition not reached within {limit_s} simulated seconds")


# --- the vehicle's actuators (pure) --------------------------------------------------------------


def test_actuators_show_in_the_next_signals() -> None:
    ev = parked()
    assert ev.signals()[LOCKED] is True
    assert not ev.is_moving
    cases: list[tuple[CommandType, dict[str, ParamValue], Callable[[], object]]] = [
        (C.UNLOCK, {}, ev.unlock),
        (C.LOCK, {}, ev.lock),
        (C.HORN_AND_LIGHTS, {}, ev.horn_and_lights),
        (C.CLIMATE_START, {"target_temperature_c": 23.5}, lambda: ev.climate_start(23.5)),
        (C.CHARGE_LIMIT, {"percent": 90}, lambda: ev.set_charge_limit(90)),
        (C.CHARGING_START, {}, ev.charging_start),
        (C.CHARGING_STOP, {}, ev.charging_stop),
        (C.CLOSE_WINDOWS, {}, ev.close_windows),
        (C.LOCATE, {}, lambda: None),
    ]
    for kind, params, action in cases:
        before = ev.signals()
        action()
        ev.step(0.5)
        after = ev.signals()
        validate_signals(after)
        assert is_confirmed_by(kind, params, after), (kind, before, after)
    assert ev.diagnostics() == ev.signals()[DTC_LIST] == []
    ev.set_speed_limit(40)
    assert ev.speed_limit_kmh == pytest.approx(40.0)
    ev.set_speed_limit(None)
    assert ev.speed_limit_kmh is None


def test_horn_and_hazard_lights_last_their_duration() -> None:
    ev = parked()
    ev.horn_and_lights(duration_s=3)
    seen = []
    for _ in range(10):
        ev.step(0.5)
        signals = ev.signals()
        assert signals[HORN] is signals[HAZARD]
        seen.append(signals[HORN])
    assert seen == [True] * 5 + [False] * 5  # 0.5 .. 2.5 s on, from 3.0 s off
    assert isinstance(refused(lambda: ev.horn_and_lights(0)).reason, ResultReason)


def test_climate_moves_the_cabin_towards_the_target_at_a_plausible_rate() -> None:
    ev = parked(start_ms=WINTER_MS)  # a January morning: the cabin is as cold as outside
    cold = num(ev.signals(), CABIN)
    assert cold < 10.0
    assert ev.signals()[FAN] == 0
    ev.climate_start(22.0)
    cabin = [cold]
    for _ in range(15):
        ev.step(60.0)
        signals = ev.signals()
        assert signals[SET_POINT] == 22.0
        assert num(signals, FAN) > 0
        cabin.append(num(signals, CABIN))
    assert cabin == sorted(cabin), "the cabin warms steadily"
    assert cabin[1] - cabin[0] < 0.3 * (22.0 - cold), "not in a flash: a fifth of the gap a minute"
    assert cabin[1] - cabin[0] > 1.0, "but noticeably"
    assert abs(cabin[-1] - 22.0) < 2.0, "close to the target after a quarter of an hour"
    ev.climate_stop()
    ev.step(60.0)
    assert ev.signals()[FAN] == 0
    assert num(ev.signals(), CABIN) < cabin[-1], "cooling down again"
    # remote climate switches itself off after 30 minutes
    ev.climate_start(21.0)
    ev.step(29 * 60.0)
    assert ev.climate_on
    ev.step(2 * 60.0)
    assert not ev.climate_on
    assert ev.signals()[SET_POINT] == 21.0, "the set point stays what was asked"
    with pytest.raises(CommandRefused):
        ev.climate_start(40.0)


def test_charging_raises_the_state_of_charge_up_to_the_limit() -> None:
    ev = parked(level=60.0)
    ev.set_charge_limit(70)
    ev.charging_start()
    socs = []
    for _ in range(40):
        ev.step(60.0)
        signals = ev.signals()
        socs.append(num(signals, SOC))
        if not signals[CHARGING]:
            break
    assert socs == sorted(socs)
    assert socs[0] > 60.0
    assert socs[-1] == 70.0, "stops at the charge limit"
    assert ev.signals()[LIMIT] == 70
    stopped = refused(ev.charging_start)
    assert stopped.reason is ResultReason.PRECONDITION_FAILED
    assert "charge limit" in stopped.detail
    # lowering the limit below the state of charge ends a charge
    ev.set_charge_limit(90)
    ev.charging_start()
    ev.set_charge_limit(60)
    assert ev.signals()[CHARGING] is False
    for bad in (49, 101, True):
        with pytest.raises(CommandRefused) as info:
            ev.set_charge_limit(bad)
        assert info.value.reason is ResultReason.BAD_PARAMS


def test_refusals_carry_a_contract_reason() -> None:
    suv = parked(VehicleProfile.COMBUSTION_SUV)
    for action in (suv.charging_start, suv.charging_stop, lambda: suv.set_charge_limit(80)):
        assert refused(action).reason is ResultReason.UNSUPPORTED
    ev = car(seed=3)
    drive_until(ev, lambda v: v.speed_kmh > 20.0, limit_s=300)
    state = ev.signals()
    for action in (ev.unlock, ev.close_windows, ev.immobilize, ev.charging_start):
        assert refused(action).reason is ResultReason.VEHICLE_MOVING
    assert not ev.immobilized
    assert ev.signals() == state, "a refused command changes nothing"
    ev.lock()  # locking on the move is fine
    assert ev.signals()[LOCKED] is True


def test_close_windows_at_a_red_light() -> None:
    for seed in range(40):
        vehicle = car(VehicleProfile.COMBUSTION_SUV, seed, level=None, start=DEPOT)
        for _ in range(1800):
            vehicle.step(1.0)
            window = vehicle.signals()[WINDOW]
            if window and vehicle.is_moving:
                assert refused(vehicle.close_windows).reason is ResultReason.VEHICLE_MOVING
            if window and vehicle.phase is Phase.WAITING:
                vehicle.close_windows()
                assert vehicle.signals()[WINDOW] == 0
                assert is_confirmed_by(C.CLOSE_WINDOWS, {}, vehicle.signals())
                return
    pytest.fail("no vehicle stood at a red light with its window open")


def test_speed_limit_caps_the_speed() -> None:
    van = car(VehicleProfile.DELIVERY_VAN, 5, start=DEPOT)
    drive_until(van, lambda v: v.speed_kmh > 40.0, limit_s=600)
    van.set_speed_limit(30)
    speeds = []
    for _ in range(1800):
        van.step(1.0)
        validate_signals(van.signals())
        speeds.append(van.speed_kmh)
    # it brakes down to the limit at its usual deceleration (at least 1.8 m/s²)...
    settled = speeds[5:]
    # ...and then never exceeds the limit, yet keeps driving
    assert max(settled) <= 30.0 + 1e-6
    assert max(settled) > 25.0
    van.set_speed_limit(None)
    drive_until(van, lambda v: v.speed_kmh > 32.0, limit_s=3600)


def test_immobilized_vehicle_does_not_start_its_next_trip() -> None:
    ev = car(seed=7)
    ev.immobilize()
    for _ in range(3600):
        ev.step(1.0)
        assert ev.phase is Phase.PARKED
        assert ev.signals()[LOCKED] is True
    assert ev.pending_events() == [], "no ignition"
    ev.release_immobilizer()
    drive_until(ev, lambda v: v.is_moving, limit_s=120)

    # immobilized while the driver gets in: the engine does not start, the driver gets out
    suv = car(VehicleProfile.COMBUSTION_SUV, seed=8)
    drive_until(suv, lambda v: v.phase is Phase.BOARDING, limit_s=60)
    suv.immobilize()
    for _ in range(600):
        suv.step(1.0)
        assert not suv.is_moving
    assert suv.phase is Phase.PARKED
    assert suv.signals()[LOCKED] is True
    assert suv.pending_events() == []

    # immobilized at a red light: the trip goes on, the next one does not start
    for seed in range(20):
        van = car(VehicleProfile.DELIVERY_VAN, seed, start=DEPOT)
        for _ in range(1800):
            van.step(1.0)
            if van.phase is Phase.WAITING:
                break
        if van.phase is Phase.WAITING:
            break
    else:
        pytest.fail("no vehicle waited at a red light")
    van.immobilize()
    drive_until(van, lambda v: v.is_moving, limit_s=60)
    drive_until(van, lambda v: v.phase is Phase.PARKED, limit_s=3600)
    for _ in range(3600):
        van.step(1.0)
        assert not van.is_moving


def test_same_commands_at_the_same_times_give_the_same_stream() -> None:
    def stream(schedule_seed: int) -> list[tuple[dict[str, SignalValue], object]]:
        vehicle = car(seed=11, level=None)
        plan = random.Random(schedule_seed)
        actions: list[Callable[[], object]] = [
            vehicle.lock,
            vehicle.unlock,
            vehicle.horn_and_lights,
            lambda: vehicle.climate_start(19.5),
            vehicle.climate_stop,
            vehicle.charging_start,
            vehicle.charging_stop,
            lambda: vehicle.set_charge_limit(85),
            vehicle.close_windows,
            lambda: vehicle.set_speed_limit(35),
            lambda: vehicle.set_speed_limit(None),
            vehicle.immobilize,
            vehicle.release_immobilizer,
            vehicle.diagnostics,
        ]
        out: list[tuple[dict[str, SignalValue], object]] = []
        for second in range(2 * 3600):
            outcome: object = None
            if second % 97 == 0:
                try:
                    outcome = plan.choice(actions)()
                except CommandRefused as exc:
                    outcome = (exc.reason, exc.detail)
            vehicle.step(1.0)
            signals = vehicle.signals()
            validate_signals(signals)  # every signal stays inside the catalog
            out.append((signals, (outcome, vehicle.pending_events())))
        return out

    first = stream(1)
    assert first == stream(1)
    assert first != stream(2)


# --- units on a broker ---------------------------------------------------------------------------


async def next_sample(watcher: Watcher, taken: Taken, *, answered: int) -> Sample:
    """The first sample taken after the ``answered``-th final answer, as it arrived."""
    await until(lambda: taken.first_after(answered=answered) is not None, "the next sample")
    sample = taken.first_after(answered=answered)
    assert sample is not None
    await until(lambda: sample.seq in watcher.samples(), f"sample {sample.seq} to arrive")
    return watcher.samples()[sample.seq]


EV_COMMANDS: list[tuple[CommandType, dict[str, ParamValue]]] = [
    (C.UNLOCK, {}),
    (C.LOCK, {}),
    (C.HORN_AND_LIGHTS, {}),
    (C.LOCATE, {}),
    (C.CLIMATE_START, {"target_temperature_c": 23.5}),
    (C.CLIMATE_STOP, {}),
    (C.CHARGE_LIMIT, {"percent": 90}),
    (C.CHARGING_START, {}),
    (C.CHARGING_STOP, {}),
    (C.CLOSE_WINDOWS, {}),
    (C.SPEED_LIMIT, {"kmh": 50}),
    (C.SPEED_LIMIT, {"kmh": None}),
    (C.REQUEST_DIAGNOSTICS, {}),
    (C.RELEASE_IMMOBILIZER, {}),
    (C.IMMOBILIZE, {}),
    (C.SET_REPORTING_INTERVAL, {"seconds": 2}),
]


def test_every_command_is_accepted_then_succeeded_and_shows_in_the_next_sample(
    mosquitto: MosquittoProcess,
) -> None:
    assert {kind for kind, _ in EV_COMMANDS} == set(CommandType)

    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            running = await start_unit(parked(), unit_settings(mosquitto))
            unit = running.unit
            for number, (kind, params) in enumerate(EV_COMMANDS, start=1):
                command_id = gateway.send(kind, params)
                await answered(watcher, command_id)
                got = watcher.results(command_id)
                assert watcher.statuses(command_id) == [S.ACCEPTED, S.SUCCEEDED], kind
                # the gateway's correlation data comes back on every answer
                assert {g.correlation for g in got} == {command_id.encode()}
                results = watcher.decoded(command_id)
                assert all(r.vin == VIN and r.reason is None for r in results)
                assert results[0].ts <= results[1].ts
                sample = await next_sample(watcher, running.taken, answered=number)
                if COMMAND_SPECS[kind].confirmation is not None:
                    assert is_confirmed_by(kind, params, sample.signals), (kind, sample)
                if kind is C.CLIMATE_STOP:
                    assert sample.signals[FAN] == 0  # parked: no climate left running
                elif kind is C.SPEED_LIMIT:
                    limit = params["kmh"]
                    assert unit.vehicle.speed_limit_kmh == (
                        None if limit is None else pytest.approx(limit)
                    )
                elif kind is C.REQUEST_DIAGNOSTICS:
                    detail = results[1].detail
                    assert detail is not None
                    assert "active trouble codes: none" in detail
                    assert sample.signals[DTC_LIST] == []
                elif kind is C.IMMOBILIZE:
                    assert unit.vehicle.immobilized
                elif kind is C.RELEASE_IMMOBILIZER:
                    assert not unit.vehicle.immobilized
                elif kind is C.SET_REPORTING_INTERVAL:
                    assert unit.report_interval_s == unit.stats().report_interval_s == 2.0
            stats = unit.stats()
            assert stats.commands_received == stats.commands_accepted == len(EV_COMMANDS)
            assert stats.commands_succeeded == stats.commands_answered == len(EV_COMMANDS)
            assert (stats.commands_rejected, stats.commands_failed) == (0, 0)
            await running.finish()

    run(scenario())


def test_locate_and_diagnostics_send_a_sample_at_once(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            # a unit that would report only every minute
            running = await start_unit(parked(), unit_settings(mosquitto, report_interval_s=60))
            telemetry = topic_for(VIN, Channel.TELEMETRY)
            assert watcher.on(telemetry) == []
            for kind in (C.LOCATE, C.REQUEST_DIAGNOSTICS):
                command_id = gateway.send(kind)
                await answered(watcher, command_id)
                samples = watcher.samples()
                assert len(samples) == len(watcher.on(telemetry)) >= 1
                newest = samples[max(samples)]
                assert is_confirmed_by(C.LOCATE, {}, newest.signals)
                detail = watcher.decoded(command_id)[1].detail
                assert detail is not None
                assert detail.endswith(f"(sample {newest.seq})") or str(newest.seq) in detail
                # the sample went out before the unit said succeeded
                sample_at = watcher.on(telemetry)[-1].at
                assert sample_at <= watcher.results(command_id)[1].at
            assert len(watcher.on(telemetry)) == 2
            # and a shorter reporting interval takes effect at once, not after the minute
            command_id = gateway.send(C.SET_REPORTING_INTERVAL, {"seconds": 1})
            await answered(watcher, command_id)
            await until(lambda: len(watcher.on(telemetry)) >= 3, "a report within a second")
            await running.finish()

    run(scenario())


def moving_vehicle() -> SimulatedVehicle:
    """An electric car driving at over 30 km/h, with at least 8 more seconds at over 25 km/h
    ahead of it (checked on a twin), clock near the wall clock."""
    start_ms = wall_clock_ms() - 600_000

    def twin() -> SimulatedVehicle:
        return car(seed=4, start_ms=start_ms, level=70.0)

    probe = twin()
    speeds = []
    for _ in range(600):
        probe.step(1.0)
        speeds.append(probe.speed_kmh)
    at = next(i for i in range(len(speeds) - 8) if speeds[i] > 30 and min(speeds[i : i + 9]) > 25)
    vehicle = twin()
    for _ in range(at + 1):
        vehicle.step(1.0)
    assert vehicle.speed_kmh > 30.0
    return vehicle


def test_unsafe_commands_are_rejected_while_driving(mosquitto: MosquittoProcess) -> None:
    unsafe = [kind for kind, spec in COMMAND_SPECS.items() if spec.unsafe_while_moving]
    assert C.UNLOCK in unsafe

    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            # no regular reports: the vehicle advances only when a command comes (to "now")
            settings = unit_settings(mosquitto, report_interval_s=60)
            running = await start_unit(moving_vehicle(), settings)
            vehicle = running.unit.vehicle
            lock = gateway.send(C.LOCK)  # fine on the move
            await answered(watcher, lock)
            assert watcher.statuses(lock) == [S.ACCEPTED, S.SUCCEEDED]
            for kind in unsafe:
                assert vehicle.speed_kmh > 20.0
                command_id = gateway.send(kind)
                await answered(watcher, command_id, count=1)
                (result,) = watcher.decoded(command_id)
                assert (result.status, result.reason) == (S.REJECTED, ResultReason.VEHICLE_MOVING)
                assert result.detail
            locate = gateway.send(C.LOCATE)
            await answered(watcher, locate)
            (sample,) = watcher.samples().values()
            assert sample.signals[IS_MOVING] is True
            assert sample.signals[LOCKED] is True, "still locked: the unlock was not run"
            assert not vehicle.immobilized
            stats = running.unit.stats()
            assert stats.commands_rejected == len(unsafe)
            assert stats.commands_accepted == 2
            await running.finish()
        # only one answer each: rejected, nothing after it
        assert len(watcher.any_result()) == 2 + len(unsafe) + 2

    run(scenario())


def test_expired_command_is_rejected_and_changes_nothing(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            running = await start_unit(parked(), unit_settings(mosquitto))
            unit = running.unit
            # issued two minutes ago, expired one minute ago (a gateway with a stale queue)
            stale = gateway.send(C.UNLOCK, issued_at=wall_clock_ms() - 120_000, ttl_ms=60_000)
            await answered(watcher, stale, count=1)
            (result,) = watcher.decoded(stale)
            assert (result.status, result.reason) == (S.REJECTED, ResultReason.EXPIRED)
            sample = await next_sample(watcher, running.taken, answered=1)
            assert sample.signals[LOCKED] is True

            # a command that expires while the unit is in a coverage gap: the broker delivers
            # it, the unit holds it until the gap ends, and then it is too late
            unit.force_offline()
            issued_at = wall_clock_ms()
            late = gateway.send(C.UNLOCK, issued_at=issued_at, ttl_ms=1500)
            expires_at = issued_at + 1500
            await until(lambda: unit.stats().commands_received == 2, "the command to arrive")
            await until(lambda: wall_clock_ms() > expires_at, "the command to expire", 3.0)
            assert watcher.results(late) == [], "no answer during the gap"
            unit.restore()
            await answered(watcher, late, count=1)
            (result,) = watcher.decoded(late)
            assert (result.status, result.reason) == (S.REJECTED, ResultReason.EXPIRED)
            sample = await next_sample(watcher, running.taken, answered=2)
            assert sample.signals[LOCKED] is True
            stats = unit.stats()
            assert (stats.commands_accepted, stats.commands_rejected) == (0, 2)
            await running.finish()
        assert len(watcher.any_result()) == 2

    run(scenario())


def test_wrong_vin_bad_input_duplicates_and_failures(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            suv = parked(VehicleProfile.COMBUSTION_SUV)
            running = await start_unit(suv, unit_settings(mosquitto))
            unit = running.unit
            own = command_result_topic(VIN)

            # another vehicle's command on this unit's topic, with that vehicle's reply route:
            # the unit answers wrong_vin on its own result topic, with its own VIN
            stray = gateway.send(C.UNLOCK, vin=OTHER_VIN, to=VIN)
            await answered(watcher, stray, count=1)
            (result,) = watcher.decoded(stray)
            assert (result.status, result.reason, result.vin) == (
                S.REJECTED,
                ResultReason.WRONG_VIN,
                VIN,
            )
            assert watcher.on(command_result_topic(OTHER_VIN)) == []

            # not a command at all: counted, not answered
            gateway.client.publish(command_topic(VIN), b"unlock please", qos=1)
            await until(lambda: unit.stats().commands_ignored == 1, "the garbage to be counted")

            # a command type newer than the firmware, and bad parameters: rejected
            unknown_id = str(uuid.uuid4())
            now = wall_clock_ms()
            unknown = (
                f'{{"command_id":"{unknown_id}","vin":"{VIN}","type":"open_sunroof",'
                f'"params":{{}},"issued_at":{now},"expires_at":{now + 30_000}}}'
            ).encode()
            gateway.client.publish(command_topic(VIN), unknown, qos=1)
            await answered(watcher, unknown_id, count=1)
            (result,) = watcher.decoded(unknown_id)
            assert (result.status, result.reason) == (S.REJECTED, ResultReason.UNSUPPORTED)
            bad = gateway.send(C.SET_REPORTING_INTERVAL, {"seconds": 0})
            await answered(watcher, bad, count=1)
            (result,) = watcher.decoded(bad)
            assert (result.status, result.reason) == (S.REJECTED, ResultReason.BAD_PARAMS)

            # the vehicle cannot do it: accepted, then failed with the reason
            charge = gateway.send(C.CHARGING_START)
            await answered(watcher, charge)
            accepted, failed = watcher.decoded(charge)
            assert accepted.status is S.ACCEPTED
            assert (failed.status, failed.reason) == (S.FAILED, ResultReason.UNSUPPORTED)
            assert failed.detail

            # a redelivered command (same id) runs once
            lock_id = str(uuid.uuid4())
            gateway.send(C.UNLOCK, command_id=lock_id)
            gateway.send(C.UNLOCK, command_id=lock_id)
            await until(lambda: unit.stats().commands_duplicate == 1, "the duplicate")
            await answered(watcher, lock_id)
            sample = await next_sample(
                watcher, running.taken, answered=unit.stats().commands_answered
            )
            assert sample.signals[LOCKED] is False

            stats = unit.stats()
            assert stats.commands_received == 7
            assert (stats.commands_ignored, stats.commands_duplicate) == (1, 1)
            assert (stats.commands_rejected, stats.commands_failed) == (3, 1)
            assert (stats.commands_accepted, stats.commands_succeeded) == (2, 1)
            assert stats.commands_answered == 5
            await running.finish()
        assert all(m.topic == own for m in watcher.any_result())
        assert watcher.statuses(lock_id) == [S.ACCEPTED, S.SUCCEEDED], "answered once"

    run(scenario())


def test_response_topic_and_correlation_data_are_honoured(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            running = await start_unit(parked(), unit_settings(mosquitto))
            reply_to = "test/replies/desk-7"
            opaque = b"\x00\x01 request 42"
            custom = gateway.send(C.HORN_AND_LIGHTS, response_topic=reply_to, correlation=opaque)
            await answered(watcher, custom, topic=reply_to)
            got = watcher.results(custom, topic=reply_to)
            assert [g.correlation for g in got] == [opaque, opaque]
            assert watcher.results(custom) == [], "nothing on the default result topic"

            # no response topic or correlation data (an MQTT 3.1.1 gateway, say): defaults
            plain = gateway.send(C.HORN_AND_LIGHTS, response_topic=None)
            await answered(watcher, plain)
            assert [g.correlation for g in watcher.results(plain)] == [plain.encode()] * 2
            await running.finish()

    run(scenario())


def test_silent_unit_receives_commands_but_answers_nothing(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            settings = unit_settings(mosquitto, answers_commands=False)
            running = await start_unit(parked(), settings)
            unit = running.unit
            gateway.send(C.UNLOCK)
            gateway.send(C.HORN_AND_LIGHTS)
            await until(lambda: unit.stats().commands_received == 2, "both commands to arrive")
            # a sample taken after that has arrived, so anything the unit published before
            # it (on the same connection) has arrived too
            after = unit.stats().next_seq
            await until(lambda: max(watcher.samples(), default=-1) >= after, "a later sample")
            assert watcher.any_result() == []
            sample = watcher.samples()[after]
            assert sample.signals[LOCKED] is True, "not run either"
            assert sample.signals[HORN] is False
            stats = unit.stats()
            assert (stats.commands_accepted, stats.commands_answered) == (0, 0)
            await running.finish()

    run(scenario())


def test_slow_unit_succeeds_command_delay_after_accepting(mosquitto: MosquittoProcess) -> None:
    delay_s = 0.4

    async def scenario() -> None:
        async with Watcher(mosquitto) as watcher, Gateway(mosquitto) as gateway:
            settings = unit_settings(mosquitto, command_delay_s=delay_s)
            running = await start_unit(parked(), settings)
            command_id = gateway.send(C.UNLOCK)
            await answered(watcher, command_id)
            accepted, succeeded = watcher.decoded(command_id)
            assert (accepted.status, succeeded.status) == (S.ACCEPTED, S.SUCCEEDED)
            assert succeeded.ts - accepted.ts >= delay_s * 1000
            first, second = watcher.results(command_id)
            assert second.at - first.at > delay_s / 2  # as seen by the gateway, too
            # while the actuator works, the doors are still locked
            during = [s for a, n, s in running.taken.samples if a == 1 and n == 0]
            assert during, "samples were taken during the delay"
            assert all(s.signals[LOCKED] is True for s in during)
            sample = await next_sample(watcher, running.taken, answered=1)
            assert sample.signals[LOCKED] is False
            await running.finish()

    run(scenario())


# --- fleet ---------------------------------------------------------------------------------------


def test_fleet_picks_slow_and_silent_units_by_seed() -> None:
    fleet = FleetSettings(count=10, seed=3, slow_share=0.2, silent_share=0.1, slow_delay_s=1.5)
    roles = command_roles(fleet)
    assert roles == command_roles(fleet)
    assert (roles.count(CommandRole.SLOW), roles.count(CommandRole.SILENT)) == (2, 1)
    other = command_roles(FleetSettings(count=10, seed=4, slow_share=0.2, silent_share=0.1))
    assert roles != other or roles.count(CommandRole.NORMAL) == 10
    base = UnitSettings()
    per_unit = build_unit_settings(fleet, base)
    for role, settings in zip(roles, per_unit, strict=True):
        slow = role is CommandRole.SLOW
        assert settings.command_delay_s == (1.5 if slow else 0.0)
        assert settings.answers_commands is (role is not CommandRole.SILENT)
    assert command_roles(FleetSettings(count=3)) == [CommandRole.NORMAL] * 3
    nonsense: list[dict[str, Any]] = [
        {"slow_share": 1.5},
        {"silent_share": -0.1},
        {"slow_share": 0.6, "silent_share": 0.6},
    ]
    for bad in nonsense:
        with pytest.raises(ValueError, match="share"):
            FleetSettings(**bad)
    with pytest.raises(ValueError, match="command_delay_s"):
        UnitSettings(command_delay_s=math.nan)

    args = build_parser().parse_args(["--slow-share", "0.5", "--silent-share", "0.25"])
    assert (args.slow_share, args.silent_share, args.slow_delay) == (0.5, 0.25, 2.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--silent-share", "2"])
