"""A gateway restart must not make offline vehicles look freshly heard.

Mosquitto replays every retained status to a gateway each time it subscribes (to a shared
subscription too), so after a restart every offline vehicle's Last Will arrived again, and
the gateway took its receive time as the vehicle's ``last_seen`` and ``status_changed_at``.
A retained replay now tells the state only: the times stay those of the last live message.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gateway.broker import MosquittoProcess
from gateway.core.batching import Batcher
from gateway.store import (
    IngestBatch,
    StatusChange,
    TelemetryBackend,
    VehicleSummary,
    open_store,
)
from schemas import StatusState
from tests.support.gateway_process import GatewayProcess
from tests.support.waiting import wait_until

VIN = "WVWZZZ1JZXW000001"
MARKER_VIN = "WVWZZZ1JZXW000002"


def _publish(broker: MosquittoProcess, topic: str, payload: str, *, retain: bool) -> None:
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
            *(["-r"] if retain else []),
        ],
        check=True,
        timeout=10,
    )


def _summary(db: Path, vin: str) -> VehicleSummary | None:
    if not db.exists():
        return None
    store = open_store(db, readonly=True)
    try:
        state = store.vehicle_state(vin, tenure=1)
    finally:
        store.close()
    return None if state is None else state.summary


def _marker(broker: MosquittoProcess, db: Path, seq: int) -> None:
    """Publish a sample of another vehicle and wait until it is stored: everything the
    gateway received before it is committed by then (one connection, in order)."""
    now = time.time_ns() // 1_000_000
    _publish(
        broker,
        f"v1/vehicles/{MARKER_VIN}/telemetry",
        f'{{"vin": "{MARKER_VIN}", "seq": {seq}, "ts": {now}, '
        '"signals": {"Vehicle.Speed": 1.0}}',
        retain=False,
    )

    wait_until(lambda: db.exists() and _count_marker(db) >= seq, what="the marker sample")


def _count_marker(db: Path) -> int:
    store = open_store(db, readonly=True)
    try:
        points = store.history(
            MARKER_VIN, ["Vehicle.Speed"], tenure=1, start=0, end=2**62, limit=99
        )
        return len(points)
    finally:
        store.close()


@pytest.mark.slow
def test_a_restart_keeps_when_offline_vehicles_were_last_heard(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    gateway = GatewayProcess(mosquitto, data, "restart-gateway")
    gateway.start()
    try:
        # the unit comes online, then its Last Will (retained offline) is published
        _publish(mosquitto, f"v1/vehicles/{VIN}/status", '{"state": "online"}', retain=True)
        _publish(mosquitto, f"v1/vehicles/{VIN}/status", '{"state": "offline"}', retain=True)
        wait_until(
            lambda: (s := _summary(gateway.db_path, VIN)) is not None and s.online is False,
            what="the vehicle to be offline",
        )
        before = _summary(gateway.db_path, VIN)
        assert before is not None
        assert before.status_changed_at is not None

        assert gateway.stop() == 0
        wait_until(
            lambda: time.time_ns() // 1_000_000 > before.last_seen + 1500, what="time to pass"
        )
        gateway.start()  # subscribes again: the broker replays the retained offline status
        _marker(mosquitto, gateway.db_path, 1)

        after = _summary(gateway.db_path, VIN)
        assert after == before  # not the restart time
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


def test_a_retained_status_is_not_a_sign_of_life() -> None:
    batcher = Batcher(clock_ms=lambda: 5000)
    batcher.add(f"v1/vehicles/{VIN}/status", b'{"state": "offline"}', retained=True)
    batch = batcher.take()
    assert batch.seen == {}
    assert batch.statuses == [StatusChange(VIN, StatusState.OFFLINE, 5000, retained=True)]
    batcher.add(f"v1/vehicles/{VIN}/status", b'{"state": "offline"}')
    assert batcher.take().seen == {VIN: 5000}


def test_a_retained_status_changes_the_state_only_when_it_differs(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = open_store(db)
    try:
        live = StatusChange(VIN, StatusState.OFFLINE, 1000)
        store.commit(IngestBatch(received_at=1000, statuses=[live], seen={VIN: 1000}))
        same = StatusChange(VIN, StatusState.OFFLINE, 9000, retained=True)
        store.commit(IngestBatch(received_at=9000, statuses=[same]))
        assert _summary_of(store) == VehicleSummary(VIN, False, 1000, 1000, 1000)
        # the broker's retained state differs from what the store knew: the state is
        # taken, the time of the change is unknown, last_seen stays
        other = StatusChange(VIN, StatusState.ONLINE, 9500, retained=True)
        store.commit(IngestBatch(received_at=9500, statuses=[other]))
        assert _summary_of(store) == VehicleSummary(VIN, True, 1000, 1000, None)
        # a live status after it sets the time again
        store.commit(
            IngestBatch(received_at=9900, statuses=[StatusChange(VIN, StatusState.OFFLINE, 9900)])
        )
        assert _summary_of(store) == VehicleSummary(VIN, False, 1000, 1000, 9900)
    finally:
        store.close()


def _summary_of(store: TelemetryBackend) -> VehicleSummary:
    state = store.vehicle_state(VIN, tenure=1)
    assert state is not None
    return state.summary
