"""``telematics up --demo`` keeps running when parts of it fail (issue 10, items 4 and 5).

Each test starts its own installation (the README's command, as a child process) and breaks
something the way it broke in the issue:

* the private broker SIGKILLed: the supervisor starts it again, ``/healthz`` turns red and
  then green, ingest and commands resume, and no sample is missing (Mosquitto forgets
  shared subscriptions when it stops; the supervisor opens the gateway's session with its
  subscription right after the start, so what the units send before the gateway is back
  queues there; and it has the broker save the units' sessions a few seconds after every
  start, so after the crash a unit resends what was in flight);
* a demo vehicle's credentials rotated through the API: the simulator is refused, exits,
  and comes back with fresh credentials; nothing else stops;
* a simulator that cannot recover (a demo VIN now belongs to another account): it is
  retried with a growing back-off and reported as crash-looping, the product stays up.

The installation also shows its data directory private (0700) and its databases 0600.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker import free_port
from tests.support.up import ADMIN_PASSWORD, Up, online, persisted_session_expiry, start
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

DEMO_VINS = ("WSMZZZ00000000001", "WSMZZZ00000000002")


def supervisor_status(up: Up) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((up.data / "health" / "supervisor.json").read_text())
    return status


def parts(up: Up) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in supervisor_status(up)["parts"]}


def health(up: Up) -> tuple[int, dict[str, Any]]:
    try:
        r = httpx.get(f"{up.api}/healthz", timeout=15)
    except httpx.HTTPError:
        return 0, {}
    body: dict[str, Any] = r.json()
    return r.status_code, body


def seqs(up: Up, vin: str) -> list[int]:
    """Every stored sample's seq (straight from the store: the history API lists samples
    that carry a given signal, not all of them)."""
    db = sqlite3.connect(f"file:{up.data / 'telemetry.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute(
            "SELECT s.seq FROM samples s JOIN vehicles v ON v.id = s.vehicle_id "
            "WHERE v.vin = ? ORDER BY s.seq",
            (vin,),
        ).fetchall()
    except sqlite3.OperationalError:  # no table yet
        return []
    finally:
        db.close()
    return [int(seq) for (seq,) in rows]


def run_command(up: Up, headers: dict[str, str], vin: str) -> str:
    created = httpx.post(
        f"{up.api}/v1/vehicles/{vin}/commands", json={"type": "horn_and_lights"}, headers=headers
    )
    assert created.status_code == 201, created.text
    url = f"{up.api}/v1/commands/{created.json()['id']}"

    def finished() -> str | None:
        body = httpx.get(url, headers=headers).json()
        return str(body["status"]) if body["terminal"] else None

    wait_until(finished, timeout=60, what="the command to finish")
    return str(finished())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


def test_a_killed_broker_comes_back_and_nothing_is_lost(
    tmp_path: Path, ports: tuple[int, int, int]
) -> None:
    up = start(tmp_path, 1, ports)
    try:
        admin = up.login("admin@localhost", ADMIN_PASSWORD)
        wait_until(lambda: len(online(up, admin)) == 2, timeout=60, what="the demo vehicles")
        wait_until(lambda: health(up)[0] == 200, what="a healthy installation")
        # a few seconds after its start the broker saved the units' fresh sessions
        saved = up.data / "broker" / "mosquitto.db"
        wait_until(
            lambda: (
                saved.exists()
                and all(persisted_session_expiry(saved, vin) is not None for vin in DEMO_VINS)
            ),
            timeout=30,
            what="the units' sessions to be saved",
        )
        before = {vin: seqs(up, vin) for vin in DEMO_VINS}
        broker = supervisor_status(up)["broker"]
        assert broker["restarts"] == 0

        os.kill(broker["pid"], signal.SIGKILL)

        wait_until(lambda: health(up)[0] == 503, timeout=15, what="/healthz to turn red")
        assert health(up)[1]["components"]["broker"]["status"] == "unavailable"
        wait_until(lambda: health(up)[0] == 200, timeout=90, what="/healthz to turn green")
        again = supervisor_status(up)["broker"]
        assert again["restarts"] == 1
        assert again["pid"] != broker["pid"]
        # the gateway and the API were never restarted: they reconnected
        assert {p["name"]: p["restarts"] for p in supervisor_status(up)["parts"]} == {
            "gateway-1": 0,
            "fleet-worker-1": 0,
            "api": 0,
            "simulator": 0,
        }

        # ingest resumes: every vehicle gets well past where it was
        def resumed() -> bool:
            return all(len(seqs(up, vin)) >= len(before[vin]) + 5 for vin in DEMO_VINS)

        wait_until(resumed, timeout=60, what="ingest to resume")
        assert run_command(up, admin, DEMO_VINS[0]) == "succeeded"
        # nothing lost: each vehicle's samples are one unbroken run of seq numbers
        for vin in DEMO_VINS:
            stored = seqs(up, vin)
            missing = sorted(set(range(stored[0], stored[-1] + 1)) - set(stored))
            assert not missing, (vin, missing, before[vin][-1] if before[vin] else None, stored)
            assert set(before[vin]) <= set(stored)

        # the databases and the data directory are private
        assert mode(up.data) == 0o700
        for name in ("telemetry.db", "state.db"):
            for suffix in ("", "-wal", "-shm"):
                path = up.data / f"{name}{suffix}"
                if path.exists():
                    assert mode(path) == 0o600, path
    finally:
        if up.process.poll() is None:
            assert up.stop() == 0


def test_rotating_a_demo_vehicles_credentials_does_not_stop_the_installation(
    tmp_path: Path, ports: tuple[int, int, int]
) -> None:
    up = start(tmp_path, 1, ports)
    try:
        admin = up.login("admin@localhost", ADMIN_PASSWORD)
        wait_until(lambda: len(online(up, admin)) == 2, timeout=60, what="the demo vehicles")
        first = parts(up)
        broker_pid = supervisor_status(up)["broker"]["pid"]
        vin = DEMO_VINS[0]
        count = len(seqs(up, vin))

        rotated = httpx.post(f"{up.api}/v1/vehicles/{vin}/credentials", headers=admin)
        assert rotated.status_code == 200, rotated.text

        unavailable: list[dict[str, Any]] = []

        def back_with_fresh_credentials() -> bool:
            code, body = health(up)
            if code != 200:
                unavailable.append(body)
            simulator = parts(up)["simulator"]
            return (
                simulator["restarts"] >= 1
                and simulator["state"] == "running"
                and len(seqs(up, vin)) >= count + 5
            )

        wait_until(back_with_fresh_credentials, timeout=120, what="the simulator to come back")
        assert not unavailable, unavailable  # never unavailable while the simulator restarted
        now = parts(up)
        for name in ("gateway-1", "fleet-worker-1", "api"):
            assert now[name]["pid"] == first[name]["pid"], name
            assert now[name]["restarts"] == 0, name
        assert supervisor_status(up)["broker"]["pid"] == broker_pid
        audit = httpx.get(
            f"{up.api}/v1/audit",
            params={"action": "vehicle_credentials_rotate", "limit": 10},
            headers=admin,
        ).json()["items"]
        # the API's rotation, then the demo's own when the simulator started again
        assert len(audit) == 2
        assert "starting it again" not in up.text()  # the broker was never touched
    finally:
        if up.process.poll() is None:
            assert up.stop() == 0


def _cli(data: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_simulator_that_cannot_recover_is_reported_and_contained(
    tmp_path: Path, ports: tuple[int, int, int]
) -> None:
    data = tmp_path / "data"
    created = _cli(data, "account", "add", "Someone else")
    match = re.search(r"account (\d+)", created)
    assert match, created
    _cli(data, "vehicle", "add", DEMO_VINS[1], "--account", match[1])  # not the demo's any more

    up = start(tmp_path, 1, ports)
    try:

        def crash_looping() -> bool:
            return bool(parts(up)["simulator"]["crash_looping"])

        wait_until(crash_looping, timeout=120, what="the simulator to be reported crash-looping")
        code, body = health(up)
        assert code == 200
        assert body["status"] == "degraded"
        assert body["components"]["part:simulator"]["status"] == "degraded"
        assert body["components"]["ingest"]["status"] == "ok"
        now = parts(up)
        assert now["gateway-1"]["restarts"] == 0
        assert now["api"]["restarts"] == 0
        assert supervisor_status(up)["broker"]["restarts"] == 0
        assert "crash-looping" in up.text()
        assert "belongs to account" in up.text()  # why, in the log
        # it keeps being retried, further and further apart
        restarts = now["simulator"]["restarts"]
        wait_until(
            lambda: parts(up)["simulator"]["restarts"] > restarts,
            timeout=60,
            what="another attempt",
        )
    finally:
        if up.process.poll() is None:
            assert up.stop() == 0
