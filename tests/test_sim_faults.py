"""Simulated units that misbehave on purpose (device_sim.faults) and report like firmware
(send-on-change in device_sim.unit).

Pure tests check that every fault encodes to exactly the quarantine reason it documents,
under the contract's own decoder; one end-to-end test drives a unit through every fault
against a real Mosquitto and a real gateway process and reads the outcome from the store.
Nothing sleeps to wait for a condition: :func:`until` polls with a deadline.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from device_sim.city import MUNICH
from device_sim.faults import (
    CLOCK_SKEW_MS,
    DEFAULT_BURST_SIZE,
    EXPECTED_REASON,
    UNKNOWN_SIGNAL,
    FaultInjector,
    FaultKind,
    FaultRates,
    Planned,
)
from device_sim.unit import ChangeFilter, SimulatedUnit, UnitSettings, wall_clock_ms
from device_sim.vehicle import SimulatedVehicle, VehicleProfile, make_vin
from gateway import metrics
from gateway.broker import MosquittoProcess
from schemas import Reason, Sample, decode_telemetry, is_valid_vin
from schemas.catalog import CATALOG
from tests.support.gateway_process import GatewayProcess
from tests.support.unit_harness import Observer, run, until

VIN = make_vin(77)
TS = 1_764_230_400_000
SIGNALS: dict[str, bool | int | float | str | list[str]] = {
    "Vehicle.Speed": 48.5,
    "Vehicle.IsMoving": True,
    "Vehicle.TraveledDistance": 12_345,
    "Vehicle.CurrentLocation.Latitude": 48.137,
    "Vehicle.CurrentLocation.Longitude": 11.575,
    "Vehicle.LowVoltageSystemState": "ON",
}


def sample(seq: int = 10, **signals: bool | float | str) -> Sample:
    return Sample(VIN, seq, TS, signals or SIGNALS)


def decode(payload: bytes) -> tuple[list[Sample], list[Reason]]:
    decoded = decode_telemetry(payload, topic_vin=VIN, now_ms=TS)
    return list(decoded.samples), [r.reason for r in decoded.rejections]


def forced(kind: FaultKind, *, seed: int = 1, before: int = 0) -> tuple[Planned, Sample]:
    """The plan for one report forced to ``kind``, after ``before`` normal reports."""
    injector = FaultInjector(FaultRates(), random.Random(seed))
    for seq in range(before):
        injector.next(sample(seq))
    injector.force(kind)
    current = sample(before + 10)
    return injector.next(current), current


# --- the injector, pure -----------------------------------------------------------------------


def test_the_catalog_is_as_these_tests_assume() -> None:
    assert set(SIGNALS) <= set(CATALOG)
    assert UNKNOWN_SIGNAL not in CATALOG
    assert decode(orjson.dumps({"vin": VIN, "seq": 1, "ts": TS, "signals": SIGNALS}))[1] == []


def test_no_rates_means_plain_reports_and_no_draws() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    injector = FaultInjector(FaultRates(), rng)
    for seq in range(20):
        planned = injector.next(sample(seq))
        assert planned == Planned(None, (orjson.dumps(_body(sample(seq))),), 1)
    assert rng.getstate() == state


def _body(s: Sample) -> dict[str, object]:
    return {"vin": s.vin, "seq": s.seq, "ts": s.ts, "signals": dict(s.signals)}


def test_the_same_seed_gives_the_same_faults_and_another_seed_others() -> None:
    rates = FaultRates(**{kind.value: 0.09 for kind in FaultKind})

    def plans(seed: int) -> list[Planned]:
        injector = FaultInjector(rates, random.Random(seed))
        return [injector.next(sample(seq)) for seq in range(300)]

    first = plans(11)
    assert first == plans(11)
    assert first != plans(12)
    kinds = {p.kind for p in first}
    assert kinds == {None, *FaultKind}  # 300 draws at 9 % each: every kind shows up


def test_rates_are_probabilities_per_report() -> None:
    injector = FaultInjector(FaultRates(clock_skew=0.25, wrong_vin=0.05), random.Random(3))
    kinds = [injector.next(sample(seq)).kind for seq in range(4000)]
    assert 0.22 < kinds.count(FaultKind.CLOCK_SKEW) / 4000 < 0.28
    assert 0.035 < kinds.count(FaultKind.WRONG_VIN) / 4000 < 0.065
    assert set(kinds) == {None, FaultKind.CLOCK_SKEW, FaultKind.WRONG_VIN}
    always = FaultInjector(FaultRates(malformed_json=1.0), random.Random(3))
    assert all(always.next(sample(s)).kind is FaultKind.MALFORMED_JSON for s in range(50))


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASON))
def test_each_quarantined_fault_decodes_to_exactly_its_documented_reason(kind: FaultKind) -> None:
    for seed in range(20):  # the details (signal, VIN, cut) vary with the seed
        planned, current = forced(kind, seed=seed)
        assert planned.kind is kind
        assert planned.seqs_used == 1
        assert not planned.disconnect
        assert len(planned.payloads) == 1
        samples, reasons = decode(planned.payloads[0])
        assert reasons == [EXPECTED_REASON[kind]], (seed, planned.payloads[0])
        if kind in (FaultKind.WRONG_TYPE, FaultKind.OUT_OF_RANGE, FaultKind.UNKNOWN_SIGNAL):
            # one bad signal: the sample and its other signals are kept
            assert [s.seq for s in samples] == [current.seq]
            assert len(samples[0].signals) == len(SIGNALS) - (kind is not FaultKind.UNKNOWN_SIGNAL)
        else:
            assert samples == []


def test_fault_details() -> None:
    planned, _ = forced(FaultKind.WRONG_VIN)
    other = orjson.loads(planned.payloads[0])["vin"]
    assert other != VIN
    assert is_valid_vin(other)
    planned, current = forced(FaultKind.CLOCK_SKEW)
    assert orjson.loads(planned.payloads[0])["ts"] == current.ts + CLOCK_SKEW_MS
    planned, _ = forced(FaultKind.UNKNOWN_SIGNAL)
    assert orjson.loads(planned.payloads[0])["signals"][UNKNOWN_SIGNAL] == 9.0
    planned, _ = forced(FaultKind.MALFORMED_JSON)
    assert orjson.dumps(_body(sample(10))).startswith(planned.payloads[0])
    planned, _ = forced(FaultKind.OUT_OF_RANGE)
    changed = {
        path: value
        for path, value in orjson.loads(planned.payloads[0])["signals"].items()
        if value != SIGNALS[path]
    }
    ((path, value),) = changed.items()
    spec_max = CATALOG[path].max
    assert spec_max is not None
    assert value > spec_max


def test_a_sample_without_a_suitable_signal_still_gets_its_fault() -> None:
    injector = FaultInjector(FaultRates(), random.Random(1))
    for kind in (FaultKind.WRONG_TYPE, FaultKind.OUT_OF_RANGE):
        injector.force(kind)
        planned = injector.next(sample(1, **{"Vehicle.IsMoving": False}))
        assert decode(planned.payloads[0])[1] == [EXPECTED_REASON[kind]]


def test_duplicate_seq_resends_the_previous_stored_seq() -> None:
    planned, current = forced(FaultKind.DUPLICATE_SEQ, before=3)  # seqs 0, 1, 2 went out
    assert planned.seqs_used == 0  # the unit's next sample reuses the seq
    (payload,) = planned.payloads
    samples, reasons = decode(payload)
    assert reasons == []  # valid on its own; the gateway knows seq 2 already
    assert [s.seq for s in samples] == [2]
    assert samples[0].ts == current.ts

    # a seq that never reached the store is not worth duplicating
    injector = FaultInjector(FaultRates(), random.Random(1))
    injector.next(sample(0))
    injector.force(FaultKind.WRONG_VIN)
    injector.next(sample(1))
    injector.force(FaultKind.DUPLICATE_SEQ)
    assert decode(injector.next(sample(2)).payloads[0])[0][0].seq == 0

    # nothing sent yet: the sample twice, under its own seq
    planned, current = forced(FaultKind.DUPLICATE_SEQ)
    assert planned.seqs_used == 1
    assert planned.payloads == (orjson.dumps(_body(current)),) * 2


def test_burst_flood_is_many_valid_samples_with_fresh_seqs() -> None:
    planned, current = forced(FaultKind.BURST_FLOOD)
    assert planned.seqs_used == DEFAULT_BURST_SIZE + 1 == len(planned.payloads)
    seqs = []
    for payload in planned.payloads:
        samples, reasons = decode(payload)
        assert reasons == []
        seqs += [s.seq for s in samples]
    assert seqs == list(range(current.seq, current.seq + DEFAULT_BURST_SIZE + 1))
    small = FaultInjector(FaultRates(burst_flood=1.0), random.Random(1), burst_size=3)
    assert small.next(sample(0)).seqs_used == 4
    with pytest.raises(ValueError, match="burst_size"):
        FaultInjector(FaultRates(), random.Random(1), burst_size=0)


def test_abrupt_disconnect_sends_the_sample_then_drops_the_link() -> None:
    planned, current = forced(FaultKind.ABRUPT_DISCONNECT)
    assert planned.disconnect
    assert planned.payloads == (orjson.dumps(_body(current)),)
    assert planned.seqs_used == 1


def test_forced_faults_come_in_order_then_the_rates_apply() -> None:
    injector = FaultInjector(FaultRates(), random.Random(1))
    injector.force(FaultKind.CLOCK_SKEW)
    injector.force(FaultKind.WRONG_VIN)
    assert injector.forced_pending == 2
    kinds = [injector.next(sample(s)).kind for s in range(3)]
    assert kinds == [FaultKind.CLOCK_SKEW, FaultKind.WRONG_VIN, None]


# --- rates ------------------------------------------------------------------------------------


def test_rates_parse_from_a_command_line_string() -> None:
    rates = FaultRates.parse("malformed_json=0.01, clock_skew=0.05")
    assert rates == FaultRates(malformed_json=0.01, clock_skew=0.05)
    assert rates.rate(FaultKind.CLOCK_SKEW) == 0.05
    assert math.isclose(rates.total, 0.06)
    assert str(rates) == "malformed_json=0.01,clock_skew=0.05"
    assert FaultRates.parse(str(rates)) == rates
    assert FaultRates.parse("") == FaultRates()
    assert not FaultRates()
    assert rates
    assert FaultRates.parse("burst_flood=1") == FaultRates(burst_flood=1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("warp_drive=0.1", "unknown fault kind 'warp_drive'; known: malformed_json, "),
        ("clock_skew", "expected kind=rate"),
        ("clock_skew=often", "clock_skew: rate 'often' is not a number"),
        ("clock_skew=1.5", "the rate of clock_skew must be 0..1, got 1.5"),
        ("clock_skew=-0.1", "must be 0..1"),
        ("clock_skew=nan", "must be 0..1"),
        ("clock_skew=0.1,clock_skew=0.2", "given twice"),
        ("clock_skew=0.6,wrong_vin=0.6", "add up to 1.2; at most 1"),
    ],
)
def test_bad_rates_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FaultRates.parse(text)


def test_unit_settings_check_the_new_fields() -> None:
    assert UnitSettings().faults == FaultRates()
    assert UnitSettings().send_on_change is False
    with pytest.raises(ValueError, match="min_signal_interval_s"):
        UnitSettings(min_signal_interval_s=-1)
    with pytest.raises(ValueError, match="heartbeat_full_s"):
        UnitSettings(heartbeat_full_s=0)
    with pytest.raises(ValueError, match="FaultRates"):
        UnitSettings(faults="clock_skew=0.1")  # type: ignore[arg-type]


# --- send-on-change, pure ---------------------------------------------------------------------


def test_send_on_change_sends_what_changed_at_most_every_min_interval() -> None:
    f = ChangeFilter(min_interval_s=1.0, heartbeat_full_s=30.0)
    signals = dict(SIGNALS)
    assert f.select(signals, 0.0) == signals  # the first report is full
    assert f.select(signals, 0.5) == {}  # nothing changed
    signals["Vehicle.LowVoltageSystemState"] = "OFF"
    assert f.select(signals, 0.5) == {}  # changed, but sent only 0.5 s ago
    assert f.select(signals, 1.0) == {"Vehicle.LowVoltageSystemState": "OFF"}
    assert f.select(signals, 2.5) == {}


def test_speed_and_position_count_as_changed_beyond_a_small_threshold() -> None:
    f = ChangeFilter(min_interval_s=0.0, heartbeat_full_s=30.0)
    signals = dict(SIGNALS)
    f.select(signals, 0.0)
    signals["Vehicle.Speed"] = 49.0  # 0.5 km/h: noise
    signals["Vehicle.CurrentLocation.Latitude"] = 48.13701  # about 1 m
    assert f.select(signals, 1.0) == {}
    signals["Vehicle.Speed"] = 50.0
    signals["Vehicle.CurrentLocation.Longitude"] = 11.5752  # about 15 m east
    assert f.select(signals, 2.0) == {
        "Vehicle.Speed": 50.0,
        "Vehicle.CurrentLocation.Latitude": 48.13701,  # a position is both coordinates
        "Vehicle.CurrentLocation.Longitude": 11.5752,
    }
    signals["Vehicle.TraveledDistance"] = 12_346  # anything else: any change
    assert f.select(signals, 3.0) == {"Vehicle.TraveledDistance": 12_346}


def test_a_full_snapshot_every_heartbeat_and_on_demand() -> None:
    f = ChangeFilter(min_interval_s=1.0, heartbeat_full_s=10.0)
    f.select(SIGNALS, 0.0)
    assert f.select(SIGNALS, 9.9) == {}
    assert f.select(SIGNALS, 10.0) == SIGNALS
    assert f.select(SIGNALS, 10.1) == {}
    assert f.select(SIGNALS, 10.2, full=True) == SIGNALS
    assert f.select({**SIGNALS, "Vehicle.Speed": 99.0}, 10.3) == {}  # min interval


# --- units on a real broker -------------------------------------------------------------------


def vehicle(vin: str, seed: int = 1) -> SimulatedVehicle:
    return SimulatedVehicle(
        vin,
        VehicleProfile.ELECTRIC_CAR,
        MUNICH,
        random.Random(seed),
        "Marienplatz",
        start_ms=wall_clock_ms(),
    )


def test_a_send_on_change_unit_sends_small_reports_with_contiguous_seqs(
    mosquitto: MosquittoProcess,
) -> None:
    vin = make_vin(78)
    settings = UnitSettings(
        host=mosquitto.host,
        port=mosquitto.port,
        report_interval_s=0.02,
        send_on_change=True,
        min_signal_interval_s=0.2,
        heartbeat_full_s=0.6,
    )
    car = vehicle(vin)
    full = set(car.signals())

    async def scenario() -> None:
        async with Observer(mosquitto, client_id="soc-observer") as obs:
            unit = SimulatedUnit(car, settings, first_seq=100)
            stop = asyncio.Event()
            task = asyncio.create_task(unit.run(stop))

            def fulls() -> int:
                return sum(set(s.signals) == full for m in obs.telemetry(vin) for s in m.samples)

            await until(lambda: fulls() >= 3, "three full snapshots")
            stop.set()
            stats = await task
            samples = [s for m in obs.telemetry(vin) for s in m.samples]
            # seq is used only by what was sent: no gaps
            assert [s.seq for s in samples] == list(range(100, 100 + len(samples)))
            assert stats.next_seq == 100 + len(samples)
            assert set(samples[0].signals) == full
            assert all(s.signals for s in samples)
            partial = [s for s in samples if set(s.signals) != full]
            assert partial, "every report was full"
            # 0.6 s between full snapshots at 50 reports a second: most reports send nothing
            assert len(samples) < 0.6 * 50 * fulls()

    run(scenario())


# --- end to end: every fault through Mosquitto into the gateway -------------------------------


def query(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    if not db_path.exists():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the gateway has not created its schema yet
        return []
    finally:
        db.close()


def test_every_fault_reaches_the_gateway_as_documented(
    mosquitto: MosquittoProcess, start_gateway: Callable[..., GatewayProcess]
) -> None:
    gw = start_gateway()
    db = gw.db_path
    vin = make_vin(79)
    settings = UnitSettings(
        host=mosquitto.host,
        port=mosquitto.port,
        report_interval_s=0.05,
        # long enough that the gateway records the Will's offline before the unit is back
        reconnect_min_s=1.0,
        reconnect_max_s=2.0,
    )
    unit = SimulatedUnit(vehicle(vin, seed=4), settings, first_seq=1)

    def reasons() -> list[str]:
        rows = query(db, "SELECT reason FROM quarantine WHERE vin = ? ORDER BY id", vin)
        return [str(r[0]) for r in rows]

    def quarantined(reason: Reason) -> Callable[[], bool]:
        return lambda: reason.value in reasons()

    def stored(first: int, last: int) -> int:
        rows = query(
            db,
            "SELECT count(*) FROM samples s JOIN vehicles v ON v.id = s.vehicle_id "
            "WHERE v.vin = ? AND s.seq BETWEEN ? AND ?",
            vin,
            first,
            last,
        )
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def duplicates() -> float:
        rows = query(db, "SELECT value FROM counters WHERE name = ?", metrics.SAMPLES_DUPLICATE)
        return float(rows[0][0]) if rows else 0.0  # type: ignore[arg-type]

    def online() -> object:
        rows = query(db, "SELECT online FROM vehicles WHERE vin = ?", vin)
        return rows[0][0] if rows else None

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(unit.run(stop))
        try:
            await until(lambda: stored(1, 3) == 3 and online() == 1, "the first samples", 15)
            for kind, reason in EXPECTED_REASON.items():
                unit.faults.force(kind)
                await until(quarantined(reason), f"{kind} quarantined as {reason}", 10)

            unit.faults.force(FaultKind.DUPLICATE_SEQ)
            await until(lambda: duplicates() >= 1, "the duplicate counted", 10)

            first = unit.stats().next_seq  # the next report carries the burst
            unit.faults.force(FaultKind.BURST_FLOOD)
            last = first + DEFAULT_BURST_SIZE
            await until(lambda: stored(first, last) == last - first + 1, "the whole burst", 10)

            connects = unit.stats().connects
            unit.faults.force(FaultKind.ABRUPT_DISCONNECT)
            await until(lambda: online() == 0, "the Last Will at the gateway", 10)
            await until(
                lambda: online() == 1 and unit.stats().connects == connects + 1,
                "online again after the reconnect",
                10,
            )
            # the unit keeps reporting after the reconnect
            after = unit.stats().next_seq
            await until(lambda: stored(after, after + 2) == 3, "samples after the reconnect", 10)
        finally:
            stop.set()
            stats = await task
        # (silent is not forced here: it only stops reports; its own test covers it)
        assert stats.faults == {kind.value: 1 for kind in FaultKind if kind is not FaultKind.SILENT}
        # every quarantined fault once, with its reason, and nothing else quarantined
        assert sorted(reasons()) == sorted(r.value for r in EXPECTED_REASON.values())

    run(scenario())


def test_silent_unit_stops_reporting_but_stays_connected(mosquitto: MosquittoProcess) -> None:
    """Fault ``silent``: hung firmware keeps its connection (no Will) and reports nothing."""

    async def scenario() -> None:
        vehicle = SimulatedVehicle(
            "WSMZZZ00000000091",
            VehicleProfile.ELECTRIC_CAR,
            MUNICH,
            random.Random(3),
            "Marienplatz",
            start_ms=wall_clock_ms(),
        )
        settings = UnitSettings(host=mosquitto.host, port=mosquitto.port, report_interval_s=0.1)
        unit = SimulatedUnit(
            vehicle,
            settings,
            fault_injector=FaultInjector(FaultRates(), random.Random(1), silence_s=1.0),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(unit.run(stop))
        await until(lambda: unit.stats().published >= 3, "live reports")
        unit.faults.force(FaultKind.SILENT)
        await until(lambda: unit.stats().faults.get("silent") == 1, "the fault")
        frozen = unit.stats().published
        await asyncio.sleep(0.5)  # well inside the 1 s silence: a clock, not a wait
        assert unit.stats().published == frozen
        assert unit.stats().connected
        await until(lambda: unit.stats().published > frozen, "reports to resume")
        stop.set()
        await task

    asyncio.run(scenario())
