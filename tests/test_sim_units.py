"""Simulated in-car units (device_sim.unit, device_sim.fleet) against a real private Mosquitto.

Every test observes the broker with a plain MQTT 5 subscriber (gmqtt) and checks what a
gateway would see: retained status with the Last Will, telemetry that decodes under the
contract, seq without gaps or repeats, and the store-and-forward upload after a coverage gap
or a broker outage. Nothing sleeps to wait for a condition: :func:`until` polls with a
deadline. Reports run every few tens of milliseconds so the whole file stays quick.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import math
import random
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from device_sim.city import DEPOT, MUNICH
from device_sim.fleet import (
    FleetSettings,
    build_parser,
    build_vehicles,
    main,
    parse_mqtt_url,
    run_fleet,
)
from device_sim.unit import SimulatedUnit, UnitSettings, wall_clock_ms
from device_sim.vehicle import SimulatedVehicle, VehicleProfile, make_vin
from gateway.broker import MosquittoProcess
from schemas import (
    Channel,
    Sample,
    Status,
    StatusState,
    decode_status,
    encode_status,
    parse_topic,
    topic_for,
)
from tests.support.unit_harness import (
    Observer,
    Received,
    Telemetry,
    run,
    settings,
    until,
)

VIN = make_vin(7)
WILL = encode_status(Status(StatusState.OFFLINE))
REPO = Path(__file__).resolve().parents[1]


async def retained(broker: MosquittoProcess, vin: str) -> Received:
    """What a newcomer subscribing to ``vin``'s status gets first: the retained message."""
    async with Observer(broker, topic_for(vin, Channel.STATUS), client_id="newcomer") as obs:
        await until(lambda: bool(obs.messages), "the retained status")
        return obs.messages[0]


async def signed_off(obs: Observer, vin: str) -> None:
    """Wait for the clean ``offline`` status: published after every sample on the same
    connection, so once it is here, everything the unit sent before it is here too."""

    def offline() -> bool:
        statuses = obs.on(vin, Channel.STATUS)
        return bool(statuses) and b'"offline"' in statuses[-1].payload

    await until(offline, f"{vin}'s offline status")


def vehicle(vin: str = VIN, *, seed: int = 1) -> SimulatedVehicle:
    return SimulatedVehicle(
        vin,
        VehicleProfile.ELECTRIC_CAR,
        MUNICH,
        random.Random(seed),
        "Marienplatz",
        start_ms=wall_clock_ms(),
    )


class Recorder:
    """Keeps every sample as the unit took it, to compare with what arrived."""

    def __init__(self) -> None:
        self.samples: dict[int, Sample] = {}

    def __call__(self, sample: Sample) -> None:
        assert sample.seq not in self.samples
        self.samples[sample.seq] = sample


def flatten(messages: list[Telemetry]) -> list[Sample]:
    return [s for message in messages for s in message.samples]


def assert_as_taken(arrived: list[Sample], recorder: Recorder) -> None:
    """Every sample arrived exactly as taken: same seq, ts and signal values."""
    for sample in arrived:
        taken = recorder.samples[sample.seq]
        assert (sample.vin, sample.ts) == (taken.vin, taken.ts)
        assert dict(sample.signals) == dict(taken.signals)


# --- one unit ------------------------------------------------------------------------------


def test_unit_reports_retained_status_and_contract_telemetry(mosquitto: MosquittoProcess) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        unit = SimulatedUnit(vehicle(), settings(mosquitto), first_seq=1000, on_sample=recorder)
        stop = asyncio.Event()
        async with Observer(mosquitto) as obs:
            task = asyncio.create_task(unit.run(stop))
            await until(lambda: len(obs.on(VIN, Channel.TELEMETRY)) >= 10, "10 samples")

            online = await retained(mosquitto, VIN)
            assert online.retain
            status = decode_status(online.payload, topic_vin=VIN)
            assert isinstance(status, Status)
            assert status.state is StatusState.ONLINE
            assert status.ts is not None
            assert abs(status.ts - wall_clock_ms()) < 60_000

            stop.set()
            final = await task
            await signed_off(obs, VIN)

        messages = obs.telemetry(VIN)
        live = [m for m in messages if not m.batch]
        assert all(len(m.samples) == 1 for m in live), "live samples travel one per message"
        assert len(live) >= 5
        arrived = flatten(messages)
        assert [s.seq for s in arrived] == list(range(1000, 1000 + len(arrived)))
        assert all(a.ts <= b.ts for a, b in itertools.pairwise(arrived))
        assert_as_taken(arrived, recorder)

        # a clean stop: everything taken was published and acknowledged, then "offline"
        assert final.samples == final.published == len(arrived) == final.next_seq - 1000
        assert (final.dropped, final.pending) == (0, 0)
        # batches only if it reported before its first CONNACK (a slow machine)
        assert final.buffered == sum(len(m.samples) for m in messages if m.batch)
        assert final.acked == final.messages  # samples, events, online and offline status
        assert final.connects == 1
        assert not final.connected
        last = decode_status(obs.on(VIN, Channel.STATUS)[-1].payload, topic_vin=VIN)
        assert isinstance(last, Status)
        assert last.state is StatusState.OFFLINE
        assert last.ts is not None, "a clean stop says offline itself (the Will has no ts)"
        gone = await retained(mosquitto, VIN)
        assert gone.retain
        assert gone.payload == encode_status(last)

    run(scenario())


def test_cancelled_unit_is_a_power_cut_and_the_broker_publishes_the_will(
    mosquitto: MosquittoProcess,
) -> None:
    async def scenario() -> None:
        unit = SimulatedUnit(vehicle(), settings(mosquitto, heartbeat_s=0.05))
        async with Observer(mosquitto) as obs:
            task = asyncio.create_task(unit.run(asyncio.Event()))
            await until(
                lambda: len(obs.on(VIN, Channel.STATUS)) >= 3, "online, then two heartbeats"
            )
            assert all(b'"online"' in m.payload for m in obs.on(VIN, Channel.STATUS))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(
                lambda: any(m.payload == WILL for m in obs.on(VIN, Channel.STATUS)),
                "the Last Will",
            )
        will = await retained(mosquitto, VIN)
        assert will.retain
        assert will.payload == WILL

    run(scenario())


def test_killed_simulator_process_leaves_the_will_behind(mosquitto: MosquittoProcess) -> None:
    """SIGKILL: no DISCONNECT at all, the kernel closes the socket; the broker must notice."""
    vin = make_vin(1)

    async def scenario() -> None:
        async with Observer(mosquitto) as obs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "device_sim",
                "--mqtt-url",
                mosquitto.url,
                "--vehicles",
                "1",
                "--interval",
                "0.05",
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                await until(lambda: bool(obs.on(vin, Channel.TELEMETRY)), "the simulator's data")
                online = obs.on(vin, Channel.STATUS)
                assert online
                assert b'"online"' in online[0].payload
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            await until(
                lambda: any(m.payload == WILL for m in obs.on(vin, Channel.STATUS)),
                "the Last Will after SIGKILL",
            )

    run(scenario())


# --- store-and-forward ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gap", "interval_s", "expected_batches"),
    [
        pytest.param(8, 0.02, 1, id="one-batch"),
        pytest.param(230, 0.004, 3, id="over-100-several-batches"),
    ],
)
def test_coverage_gap_is_uploaded_in_order_before_live_samples_resume(
    mosquitto: MosquittoProcess, gap: int, interval_s: float, expected_batches: int
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        unit = SimulatedUnit(
            vehicle(),
            # a wide in-flight window: at 250 Hz a slow PUBACK must not turn live samples into
            # extra batches (that is correct behaviour, but not what this test counts)
            settings(mosquitto, report_interval_s=interval_s, max_inflight=1000),
            first_seq=0,
            on_sample=recorder,
        )
        stop = asyncio.Event()
        async with Observer(mosquitto) as obs:
            task = asyncio.create_task(unit.run(stop))
            await until(lambda: len(obs.on(VIN, Channel.TELEMETRY)) >= 3, "live samples")

            unit.force_offline()
            gap_from = unit.stats().next_seq  # the first sample taken in the gap
            await until(lambda: unit.stats().pending >= gap, f"{gap} buffered samples")
            assert unit.stats().connected, "a forced gap keeps the MQTT connection"
            unit.restore()

            def live_after_gap() -> int:
                messages = obs.telemetry(VIN)
                after = [i for i, m in enumerate(messages) if m.samples[-1].seq >= gap_from]
                return sum(not messages[i].batch for i in after)

            await until(lambda: live_after_gap() >= 3, "live samples after the upload")
            stop.set()
            final = await task
            await signed_off(obs, VIN)

        messages = obs.telemetry(VIN)
        arrived = flatten(messages)
        # nothing lost, nothing twice, in seq order, each as it was taken (original ts)
        assert [s.seq for s in arrived] == list(range(len(arrived)))
        assert all(a.ts < b.ts for a, b in itertools.pairwise(arrived))
        assert_as_taken(arrived, recorder)
        assert final.published == len(arrived) == final.samples
        assert (final.dropped, final.pending) == (0, 0)
        assert final.buffered == sum(len(m.samples) for m in messages if m.batch)

        # (a unit that reports before its first CONNACK, on a slow machine, uploads those
        # samples in a batch too; only the gap's batches are counted here)
        first = next(i for i, m in enumerate(messages) if m.samples[-1].seq >= gap_from)
        gap_batches = list(itertools.takewhile(lambda m: m.batch, messages[first:]))
        assert len(gap_batches) == expected_batches, "the batches follow each other"
        assert all(len(m.samples) <= 100 for m in gap_batches)
        uploaded = flatten(gap_batches)
        assert uploaded[0].seq == gap_from, "the gap's samples came in batches, none live"
        assert len(uploaded) >= gap
        assert math.ceil(len(uploaded) / 100) == expected_batches
        after = messages[first + len(gap_batches) :]
        assert after, "live samples resumed after the upload"
        assert all(not m.batch and len(m.samples) == 1 for m in after)

    run(scenario())


def test_full_buffer_drops_the_oldest_samples_and_counts_them(
    mosquitto: MosquittoProcess,
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        unit = SimulatedUnit(
            vehicle(), settings(mosquitto, buffer_limit=5), first_seq=0, on_sample=recorder
        )
        stop = asyncio.Event()
        async with Observer(mosquitto) as obs:
            task = asyncio.create_task(unit.run(stop))
            await until(lambda: bool(obs.on(VIN, Channel.TELEMETRY)), "a live sample")
            unit.force_offline()
            before = unit.stats()
            await until(lambda: unit.stats().dropped >= before.dropped + 4, "4 dropped samples")
            unit.restore()
            await until(
                lambda: any(m.samples[0].seq >= before.next_seq for m in obs.batches(VIN)),
                "the batch",
            )
            stop.set()
            final = await task
            await signed_off(obs, VIN)

        messages = obs.telemetry(VIN)
        at = next(i for i, m in enumerate(messages) if m.samples[-1].seq >= before.next_seq)
        assert messages[at].batch
        seqs = [s.seq for s in messages[at].samples]
        assert len(seqs) == 5, "the buffer keeps its newest buffer_limit samples"
        assert seqs == list(range(seqs[0], seqs[0] + 5))
        # the gap lost its oldest samples (and only those), and counted them
        assert messages[at - 1].samples[-1].seq == before.next_seq - 1
        lost = seqs[0] - before.next_seq
        assert lost == final.dropped - before.dropped >= 4
        assert {s.seq for s in flatten(messages[at:])} == set(range(seqs[0], final.next_seq))
        assert_as_taken(flatten(messages), recorder)

    run(scenario())


def test_broker_outage_buffers_and_uploads_after_the_reconnect(
    mosquitto: MosquittoProcess,
) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        unit = SimulatedUnit(vehicle(), settings(mosquitto), first_seq=0, on_sample=recorder)
        stop = asyncio.Event()
        # a persistent session, so what the unit uploads while we reconnect waits for us
        async with Observer(mosquitto, client_id="watcher", persistent=True) as obs:
            task = asyncio.create_task(unit.run(stop))
            await until(lambda: len(obs.on(VIN, Channel.TELEMETRY)) >= 3, "live samples")

            mosquitto.stop()
            await until(lambda: not unit.connected, "the unit to notice the outage")
            await until(lambda: unit.stats().pending >= 5, "samples buffered during the outage")
            mosquitto.start()
            await until(lambda: unit.stats().connects == 2, "the unit to reconnect")
            await until(lambda: bool(obs.batches(VIN)), "the uploaded backlog")
            stop.set()
            final = await task
            await until(
                lambda: {s.seq for s in flatten(obs.telemetry(VIN))} >= set(range(final.samples)),
                "every sample",
            )

        arrived = flatten(obs.telemetry(VIN))
        # after an outage a sample in flight may come twice (QoS 1 replay); none is lost
        assert {s.seq for s in arrived} == set(range(final.samples))
        assert_as_taken(arrived, recorder)
        assert (final.dropped, final.pending) == (0, 0)
        assert final.buffered >= 5
        statuses = [decode_status(m.payload, topic_vin=VIN) for m in obs.on(VIN, Channel.STATUS)]
        assert [s.state for s in statuses if isinstance(s, Status)].count(
            StatusState.ONLINE
        ) >= 2, "online again after the reconnect"

    run(scenario())


# --- fleet and command line ----------------------------------------------------------------


def test_fleet_vehicles_are_deterministic_and_start_where_they_should() -> None:
    fleet = FleetSettings(count=9, seed=3)
    one = build_vehicles(fleet, start_ms=0)
    two = build_vehicles(fleet, start_ms=0)
    assert [v.vin for v in one] == [make_vin(i) for i in range(1, 10)]
    assert [(v.profile, v.position(), v.signals()) for v in one] == [
        (v.profile, v.position(), v.signals()) for v in two
    ]
    depot = (MUNICH.nodes[DEPOT].lat, MUNICH.nodes[DEPOT].lon)
    vans = [v for v in one if v.profile is VehicleProfile.DELIVERY_VAN]
    others = [v for v in one if v.profile is not VehicleProfile.DELIVERY_VAN]
    assert len(vans) == 3
    assert all(v.position() == depot for v in vans)
    assert len({v.position() for v in others}) == len(others) == 6
    assert depot not in {v.position() for v in others}
    other_seed = build_vehicles(FleetSettings(count=9, seed=4), start_ms=0)
    assert [v.position() for v in other_seed] != [v.position() for v in one]


def test_fleet_of_three_runs_and_all_publish(mosquitto: MosquittoProcess) -> None:
    vins = [make_vin(i) for i in (1, 2, 3)]

    async def scenario() -> None:
        stop = asyncio.Event()
        progress: list[dict[str, Any]] = []
        fleet = FleetSettings(count=3, seed=5, first_seq=0, progress_interval_s=0.1)
        async with Observer(mosquitto) as obs:
            task = asyncio.create_task(
                run_fleet(fleet, settings(mosquitto), stop, on_progress=progress.append)
            )
            await until(
                lambda: (
                    bool(progress) and all(len(obs.on(v, Channel.TELEMETRY)) >= 5 for v in vins)
                ),
                "5 samples from every vehicle and a progress report",
            )
            stop.set()
            summary = await task
            for vin in vins:
                await signed_off(obs, vin)

        assert sorted({parse_topic(m.topic).vin for m in obs.messages}) == vins
        for vin in vins:
            seqs = [s.seq for s in flatten(obs.telemetry(vin))]
            assert seqs == list(range(len(seqs)))
            assert summary["units"][vin]["published"] == len(seqs)
        assert summary["vehicles"] == 3
        assert summary["published"] == sum(u["published"] for u in summary["units"].values())
        assert (summary["dropped"], summary["pending"]) == (0, 0)
        assert progress, "on_progress was called"
        assert progress[-1]["vehicles"] == 3

    run(scenario())


def test_command_line_runs_for_a_duration_and_prints_a_summary(
    mosquitto: MosquittoProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()

    async def scenario() -> int:
        argv = ["--mqtt-url", mosquitto.url, "--vehicles", "2", "--interval", "0.1"]
        return await main([*argv, "--duration", "0.6", "--progress", "0.2"], out=out)

    gmqtt_log = logging.getLogger("gmqtt")
    level = gmqtt_log.level
    try:
        code = asyncio.run(scenario())
    finally:
        gmqtt_log.setLevel(level)  # main() quiets gmqtt for the command line
    assert code == 0
    assert out.getvalue() == ""  # the JSON summary is for --json
    err = capsys.readouterr().err
    assert "2/2 connected" in err
    (done,) = [line for line in err.splitlines() if line.startswith("device_sim: done in")]
    counts = re.search(r"([\d,]+) published, ([\d,]+) acknowledged", done)
    assert counts is not None, done
    published, acknowledged = (int(n.replace(",", "")) for n in counts.groups())
    assert published >= 6
    assert acknowledged == published

    out = io.StringIO()
    argv = ["--mqtt-url", mosquitto.url, "--vehicles", "2", "--duration", "0.6", "--json"]
    try:
        code = asyncio.run(main(argv, out=out))
    finally:
        gmqtt_log.setLevel(level)
    assert code == 0
    summary = json.loads(out.getvalue())
    assert summary["vehicles"] == 2
    assert summary["acked"] >= summary["published"] > 0
    assert sorted(summary["units"]) == [make_vin(1), make_vin(2)]


def test_command_line_help_and_url_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--mqtt-url", "--vehicles", "--seed", "--interval", "--duration"):
        assert option in help_text
    assert parse_mqtt_url("mqtt://broker.example") == ("broker.example", 1883)
    assert parse_mqtt_url("mqtt://[::1]:1884") == ("::1", 1884)
    for bad in ("http://x:1883", "mqtt://x:0", "mqtt://u:p@x", "mqtt://x/path", "mqtt://"):
        with pytest.raises(ValueError, match="invalid MQTT URL"):
            parse_mqtt_url(bad)
    with pytest.raises(SystemExit):
        asyncio.run(main(["--mqtt-url", "mqtts://x"]))
    assert "TLS" in capsys.readouterr().err


def test_unit_settings_reject_nonsense() -> None:
    for bad in (
        {"port": 0},
        {"report_interval_s": 0},
        {"report_interval_s": math.inf},
        {"buffer_limit": -1},
        {"batch_max_samples": 1001},
        {"password": "secret"},
        {"heartbeat_s": 0},
        {"reconnect_min_s": 2.0, "reconnect_max_s": 1.0},
    ):
        with pytest.raises(ValueError, match=r"must|needs"):
            UnitSettings(**bad)
    assert UnitSettings().report_interval_s == 1.0


def test_a_quiet_unit_says_online_again_within_the_contracts_heartbeat(
    mosquitto: MosquittoProcess,
) -> None:
    """docs/device-contract.md section 7: a unit publishes something at least every 300 s,
    or the gateway shows it offline as silent. One that samples rarely (here: never within
    the test) re-publishes its online status when it has been quiet that long."""

    async def scenario() -> None:
        quiet = settings(mosquitto, report_interval_s=3600.0, max_quiet_s=0.2)
        unit = SimulatedUnit(vehicle(), quiet)
        async with Observer(mosquitto) as obs:
            stop = asyncio.Event()
            task = asyncio.create_task(unit.run(stop))
            await until(
                lambda: len(obs.on(VIN, Channel.STATUS)) >= 3, "online, then two heartbeats"
            )
            assert obs.on(VIN, Channel.TELEMETRY) == []
            stop.set()
            await task

    run(scenario())
    with pytest.raises(ValueError, match="max_quiet_s"):
        UnitSettings(max_quiet_s=301)
