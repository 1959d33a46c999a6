"""The fleet load generator (:mod:`device_sim.fleetload`, ``telematics bench fleet-scale``)
against a real Mosquitto: what it sends (every report's content and shape, send-on-change
for driving units, seq without a hole) and what it costs while paused (issue 18: a paused
generator's units woke every 50 ms and took the CPU the gateway needed to catch up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from device_sim.loadgen import bench_vin, heartbeat_signals
from gateway.broker import MosquittoProcess
from schemas import SignalValue

DRIVING_EVERY = 3
HEARTBEAT_S = 2


class _Generator:
    def __init__(
        self, port: int, count: int, heartbeat_s: float = HEARTBEAT_S, keepalive_s: int = 120
    ) -> None:
        argv = [
            *[sys.executable, "-m", "device_sim.fleetload", "--port", str(port)],
            *["--keepalive", str(keepalive_s)],
            *["--count", str(count), "--driving-every", str(DRIVING_EVERY)],
            *["--heartbeat-min", str(heartbeat_s), "--heartbeat-max", str(heartbeat_s)],
            *["--stats-every", "0.2"],
        ]
        env = {**os.environ, "FLEETLOAD_PASSWORD": "unused"}
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.last: dict[str, Any] = {}
        #: the figures printed on the last pause
        self.paused: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            figures = json.loads(line)
            if figures.get("paused"):
                self.paused = figures
            self.last = figures

    def pause(self) -> dict[str, Any]:
        self.paused = {}
        self.say("pause")
        deadline = time.monotonic() + 70
        while not self.paused:
            assert time.monotonic() < deadline, f"never paused: {self.last}"
            time.sleep(0.05)
        return self.paused

    def wait(self, key: str, value: object, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.last.get(key) != value:
            assert time.monotonic() < deadline, f"{key} never {value}: {self.last}"
            time.sleep(0.05)

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.say("stop")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def generator(mosquitto: MosquittoProcess) -> Iterator[list[_Generator]]:
    started: list[_Generator] = []
    yield started
    for g in started:
        g.stop()


def _expected(i: int, reports: int) -> list[dict[str, SignalValue]]:
    """What unit ``i`` sends, report by report (the generator's rule before issue 18's
    rewrite: parked units a full report each time; driving units the signals that changed
    since their last report, a full one every ``--heartbeat-min`` reports)."""
    driving = i % DRIVING_EVERY == 0
    last: dict[str, SignalValue] = {}
    out = []
    for n in range(reports):
        signals = heartbeat_signals(i, n, driving=driving)
        if driving and n % HEARTBEAT_S:
            signals = {k: v for k, v in signals.items() if last.get(k) != v}
        last.update(signals)
        out.append(signals)
    return out


def test_every_report_is_what_the_fleet_always_sent(
    mosquitto: MosquittoProcess, generator: list[_Generator]
) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    received: list[tuple[str, bytes]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleetload-test", protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: received.append((m.topic, bytes(m.payload)))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe("v1/vehicles/+/telemetry", qos=1)
    sub.loop_start()
    try:
        time.sleep(0.5)
        g = _Generator(mosquitto.port, count=6)
        generator.append(g)
        g.wait("connected", 6)
        time.sleep(5)
        paused = g.pause()
        acked = paused["acked"]
        deadline = time.monotonic() + 10
        while len(received) < acked and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert acked == paused["sent"] > 6
    assert paused["inflight"] == 0
    assert len(received) == acked
    by_vin: dict[str, list[dict[str, Any]]] = {}
    for topic, payload in received:
        body = orjson.loads(payload)
        assert topic == f"v1/vehicles/{body['vin']}/telemetry"
        assert list(body) == ["vin", "seq", "ts", "signals"]
        assert abs(body["ts"] - time.time() * 1000) < 60_000
        by_vin.setdefault(body["vin"], []).append(body)
    assert set(by_vin) == {bench_vin(i) for i in range(6)}
    for i in range(6):
        reports = sorted(by_vin[bench_vin(i)], key=lambda b: b["seq"])
        assert [r["seq"] for r in reports] == list(range(1, len(reports) + 1))
        assert [r["signals"] for r in reports] == _expected(i, len(reports))
    # the driving units (0 and 3) report every second, the parked ones every 2 s
    assert len(by_vin[bench_vin(0)]) > len(by_vin[bench_vin(1)])
    assert any(len(r["signals"]) < 28 for r in by_vin[bench_vin(0)])  # send-on-change


def test_a_paused_generator_takes_no_cpu(
    mosquitto: MosquittoProcess, generator: list[_Generator]
) -> None:
    """While the benchmark waits for the gateway to commit the backlog, its generators
    must leave the CPU to it (before: 400 units took ~0.3 s of CPU a second, each waking
    every 50 ms)."""
    g = _Generator(mosquitto.port, count=400, heartbeat_s=30)
    generator.append(g)
    g.wait("connected", 400)
    g.pause()
    before, started = g.cpu_s(), time.monotonic()
    time.sleep(3)
    used = (g.cpu_s() - before) / (time.monotonic() - started)
    assert used < 0.03, f"a paused generator used {used:.0%} of a core"
    g.say("resume")
    sent = g.last["sent"]
    time.sleep(2.5)
    assert g.last["sent"] > sent  # the driving units report again


def test_a_paused_generator_stays_connected(
    mosquitto: MosquittoProcess, generator: list[_Generator]
) -> None:
    """The benchmark's accounting may keep the generators paused for minutes (decision
    0047); a unit silent for 1.5 keepalives is disconnected by the broker. Each silent unit
    sends PINGREQ at half its keepalive, as a real unit does (before: with a 2 s keepalive,
    every unit of a generator paused 6 s was disconnected and logged in again)."""
    g = _Generator(mosquitto.port, count=20, heartbeat_s=30, keepalive_s=2)
    generator.append(g)
    g.wait("connected", 20)
    g.pause()
    time.sleep(6)
    assert g.last["reconnects"] == 0
    assert g.last["connected"] == 20
