"""A bulk identity change restarts the private broker; units that keep publishing across it
lose nothing (issue 18, decision 0031).

``telematics up`` (closed broker, identity sync, gateway, API) runs as a child process. Ten
units log in as their VINs and publish telemetry at QoS 1 without pause; each waits for
its PUBACK, sends the same sample again on a new connection when the old one dropped, and
reconnects as fast as it can (every 10 ms), as impatient firmware does. Then 800 vehicles
are provisioned in one transaction: the sync finds that too large to apply through the
plugin and restarts the broker with re-rendered files (decision 0008).

Before decision 0031 the units were back on the restarted broker before the gateway's
shared subscription was (Mosquitto does not save shared subscriptions; the supervisor
opened them only once the broker answered), and what they published in that gap was
acknowledged with reason 0x10 "no matching subscribers", a success code, and dropped.
Here a PUBACK 0x10 is a failure, and every acknowledged sample must be stored.

Since decision 0060 that restart only happens where our vehicle_auth plugin cannot be
compiled (the vehicles' rights then stay in the Dynamic Security plugin): the test runs
``telematics up`` that way (a compiler that refuses that one plugin), and once more with
the plugin, where the same bulk is one table swap: no restart, no unit reconnects, nothing
lost.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from device_sim.loadgen import bench_vin
from gateway.broker import free_port, hash_password
from gateway.broker.control import login_code
from tests.support.mqtt_raw import Mqtt5Client
from tests.support.up import start_healthy
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

PASSWORD = "restart-unit-password-1"
UNITS = 10
BULK = 800
NO_SUBSCRIBERS = 0x10


class _Unit(threading.Thread):
    """One impatient unit: publishes sample after sample at QoS 1, waiting for each PUBACK."""

    def __init__(self, port: int, vin: str, stop: threading.Event) -> None:
        super().__init__(name=f"unit-{vin}", daemon=True)
        self.port, self.vin, self.stop = port, vin, stop
        self.acked: list[int] = []
        self.no_subscribers: list[int] = []
        self.reconnects = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _connect(self) -> Mqtt5Client | None:
        try:
            client, code = Mqtt5Client.connect(
                "127.0.0.1", self.port, self.vin, username=self.vin, password=PASSWORD
            )
        except OSError:
            return None
        if code != 0:
            client.close()
            return None
        return client

    def _run(self) -> None:
        topic = f"v1/vehicles/{self.vin}/telemetry"
        seq = 1
        client: Mqtt5Client | None = None
        while not self.stop.is_set():
            if client is None:
                client = self._connect()
                if client is None:
                    time.sleep(0.01)
                    continue
            payload = orjson.dumps(
                {
                    "vin": self.vin,
                    "seq": seq,
                    "ts": time.time_ns() // 1_000_000,
                    "signals": {"Vehicle.Speed": float(seq % 120)},
                }
            )
            try:
                reason = client.publish(topic, payload)
            except OSError:  # the broker went away: the same sample again, on a new connection
                client.close()
                client = None
                self.reconnects += 1
                continue
            if reason == NO_SUBSCRIBERS:
                self.no_subscribers.append(seq)
            self.acked.append(seq)
            seq += 1
            time.sleep(0.05)
        if client is not None:
            client.disconnect()


def _stored(data: Path, vin: str) -> set[int]:
    db = sqlite3.connect(f"file:{data / 'telemetry.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT s.seq FROM samples s JOIN vehicles v ON v.id = s.vehicle_id WHERE v.vin = ?",
            (vin,),
        ).fetchall()
    except sqlite3.OperationalError:  # no table yet
        return set()
    finally:
        db.close()
    return {int(seq) for (seq,) in rows}


def _broker_status(data: Path) -> dict[str, Any]:
    try:
        status = json.loads((data / "health" / "supervisor.json").read_text())
    except (OSError, ValueError):
        return {}
    broker: dict[str, Any] = status.get("broker") or {}
    return broker


def _provision(data: Path, vins: list[str], password_hash: str, account: str) -> None:
    """In one transaction: one change of the broker identities (bench fleet-scale's way)."""
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.database import default_url

    db = StateDatabase(default_url(data))
    try:
        accounts = AccountRepository(db)
        now = time.time_ns() // 1_000_000
        account_id = accounts.create_account("organization", account, now=now).id
        accounts.provision_vehicles(
            vins,
            account_id=account_id,
            label=None,
            mqtt_password_hash=password_hash,
            provisioned_by=None,
            now=now,
        )
    finally:
        db.dispose()


def _without_vehicle_auth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``telematics up`` as on a host that cannot build the vehicle_auth plugin (its
    compiler fails on that source only; the budget plugin is built as usual)."""
    compiler = tmp_path / "cc-without-vehicle-auth"
    compiler.write_text(
        '#!/bin/sh\ncase "$*" in *vehicle_auth.c*) echo "no libssl-dev" >&2; exit 1;; esac\n'
        'exec gcc "$@"\n'
    )
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))


def _start_up(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    mqtt_port, api_port = free_port(), free_port()
    up = start_healthy(tmp_path, mqtt_port, api_port, admin_password="restart-admin-password-1")
    return up, tmp_path / "data", mqtt_port


def _accepted(port: int, vin: str) -> bool:
    try:
        return login_code("127.0.0.1", port, vin, PASSWORD, client_id=vin) == 0
    except OSError:
        return False


@pytest.mark.parametrize("rights", ["dynamic_security", "vehicle_auth"])
def test_units_publishing_across_a_bulk_identity_restart_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rights: str
) -> None:
    if rights == "dynamic_security":
        _without_vehicle_auth(tmp_path, monkeypatch)
    up, data, port = _start_up(tmp_path)
    stop = threading.Event()
    units: list[_Unit] = []
    try:
        password_hash = hash_password(PASSWORD)
        vins = [bench_vin(i) for i in range(UNITS)]
        _provision(data, vins, password_hash, "Units")
        wait_until(lambda: _accepted(port, vins[-1]), timeout=60, what="the units' logins")
        units = [_Unit(port, vin, stop) for vin in vins]
        for unit in units:
            unit.start()
        wait_until(lambda: all(len(u.acked) >= 10 for u in units), timeout=60, what="traffic")
        assert _broker_status(data)["restarts"] == 0

        bulk = [bench_vin(1000 + i) for i in range(BULK)]
        _provision(data, bulk, password_hash, "Bulk")
        if rights == "dynamic_security":
            # large enough that the sync restarts the broker instead of 1,600 plugin commands
            wait_until(
                lambda: _broker_status(data).get("restarts") == 1, timeout=120, what="the restart"
            )
            wait_until(lambda: all(u.reconnects for u in units), timeout=60, what="the reconnects")
        else:
            # one table swap (decision 0060): the last of them logs in, nobody else noticed
            wait_until(lambda: _accepted(port, bulk[-1]), timeout=60, what="the bulk's logins")
            assert _broker_status(data)["restarts"] == 0
            assert not [u.vin for u in units if u.reconnects]
        after = {u.vin: len(u.acked) for u in units}
        wait_until(
            lambda: all(len(u.acked) >= after[u.vin] + 20 for u in units),
            timeout=120,
            what="traffic after the restart",
        )
    except BaseException:
        up.terminate()  # the block below is not reached: stop `telematics up` here
        up.wait(60)
        raise
    finally:
        stop.set()
        for unit in units:
            unit.join(30)
    try:
        assert not [u.error for u in units if u.error is not None]
        if rights == "vehicle_auth":
            assert _broker_status(data)["restarts"] == 0
            assert not [u.vin for u in units if u.reconnects]
        dropped = {u.vin: u.no_subscribers for u in units if u.no_subscribers}
        assert not dropped, f"acknowledged with 0x10 (no subscriber: dropped): {dropped}"

        def missing() -> dict[str, list[int]]:
            gaps = {u.vin: sorted(set(u.acked) - _stored(data, u.vin)) for u in units}
            return {vin: seqs for vin, seqs in gaps.items() if seqs}

        deadline = time.monotonic() + 60
        while missing() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not missing(), f"acknowledged, never stored: {missing()}"
    finally:
        up.terminate()
        up.wait(60)
