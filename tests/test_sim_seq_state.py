"""The simulated units keep their ``seq`` counters across restarts (``--seq-state FILE``,
what ``telematics up --demo`` gives its simulator; decision 0065): a demo stopped and started
again shows no seq gap, and after a ``kill -9`` at most the documented block per unit.

Real Mosquitto, the real simulator as a process (as ``telematics up`` starts it), and a
subscriber that sees every sample and event the units publish; "missing" is counted as the
gateway counts it (numbers between the first and the last received that never arrived).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sim.seqstate import RESERVED_BLOCK
from gateway.broker import MosquittoProcess
from tests.support.sim_credentials import sim


class Seen:
    """Every telemetry and event ``seq`` per VIN the broker delivers."""

    def __init__(self, url_port: int) -> None:
        self.samples: dict[str, list[int]] = defaultdict(list)
        self.events: dict[str, list[int]] = defaultdict(list)
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="seq-watcher")
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", url_port)
        self._client.subscribe([("v1/vehicles/+/telemetry", 1), ("v1/vehicles/+/events", 1)])
        self._client.loop_start()
        assert subscribed.wait(10), "the watcher did not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        vin = msg.topic.split("/")[2]
        with self._lock:
            if msg.topic.endswith("/events"):
                self.events[vin].append(data["seq"])
            elif "samples" in data:
                self.samples[vin].extend(s["seq"] for s in data["samples"])
            else:
                self.samples[vin].append(data["seq"])

    def snapshot(self) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
        with self._lock:
            return (
                {v: set(s) for v, s in self.samples.items()},
                {v: set(s) for v, s in self.events.items()},
            )

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture
def seen(mosquitto: MosquittoProcess) -> Iterator[Seen]:
    watcher = Seen(mosquitto.port)
    try:
        yield watcher
    finally:
        watcher.close()


def missing(numbers: set[int]) -> int:
    return max(numbers) - min(numbers) + 1 - len(numbers)


def _argv(mosquitto: MosquittoProcess, state: Path) -> list[str]:
    return [
        *("--mqtt-url", mosquitto.url, "--vehicles", "3", "--rate", "5"),
        *("--seq-state", str(state), "--json"),
    ]


def _settle() -> None:
    time.sleep(0.5)  # the last PUBLISHes reach the watcher


def test_a_restarted_fleet_continues_its_numbers_without_a_gap(
    mosquitto: MosquittoProcess, seen: Seen, tmp_path: Path
) -> None:
    state = tmp_path / "data" / "simulator" / "seq-state.json"
    argv = _argv(mosquitto, state)
    first = sim(*argv, "--duration", "2")
    assert first.returncode == 0, first.stderr
    assert json.loads(state.read_text())["clean"] is True
    _settle()
    before, _ = seen.snapshot()
    time.sleep(1.5)  # stopped for a while: a clock-numbered restart would skip ~1,500 numbers
    second = sim(*argv, "--duration", "2")
    assert second.returncode == 0, second.stderr
    _settle()
    samples, events = seen.snapshot()
    assert len(samples) == 3
    for vin, numbers in samples.items():
        assert len(numbers) > len(before[vin]) >= 5, vin  # both runs reported
        assert missing(numbers) == 0, (vin, sorted(numbers))
    for vin, numbers in events.items():
        assert missing(numbers) == 0, (vin, sorted(numbers))


def test_after_kill_9_a_unit_skips_at_most_its_reserved_block_and_reuses_nothing(
    mosquitto: MosquittoProcess, seen: Seen, tmp_path: Path
) -> None:
    state = tmp_path / "seq-state.json"
    argv = _argv(mosquitto, state)
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_sim", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            samples, _ = seen.snapshot()
            if len(samples) == 3 and all(len(s) >= 5 for s in samples.values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the units did not report")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert json.loads(state.read_text())["clean"] is False
    _settle()
    killed, _ = seen.snapshot()
    again = sim(*argv, "--duration", "2")
    assert again.returncode == 0, again.stderr
    _settle()
    samples, _ = seen.snapshot()
    for vin, numbers in samples.items():
        new = numbers - killed[vin]
        assert new, vin
        assert min(new) > max(killed[vin]), vin  # nothing reused
        skipped = min(new) - max(killed[vin]) - 1
        assert 0 < skipped <= RESERVED_BLOCK, (vin, skipped)
        assert missing(numbers) == skipped, vin


def test_a_seq_state_file_is_one_process_and_a_bad_one_is_named(tmp_path: Path) -> None:
    state = tmp_path / "seq-state.json"
    url = "mqtt://127.0.0.1:1"
    two = sim("--mqtt-url", url, "--procs", "2", "--seq-state", str(state))
    assert two.returncode == 2
    assert "--seq-state needs --procs 1" in two.stderr
    state.write_text("{}")
    bad = sim("--mqtt-url", url, "--seq-state", str(state))
    assert bad.returncode == 2
    assert "not a simulator seq state file" in bad.stderr
