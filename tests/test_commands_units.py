"""Remote commands against real simulated units (device_sim) over a real Mosquitto: every
command type end to end with its confirmation by telemetry, offline vehicles before and
after expiry, and a command service restart with commands in flight."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.broker import MosquittoProcess
from tests.support.commands_api import Api, Observer, get, wait_status
from tests.support.gateway_process import GatewayProcess
from tests.support.unit_thread import VIN, UnitThread, known_and_online, parked_ev
from tests.support.waiting import wait_until


@pytest.fixture
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def api(
    gateway: GatewayProcess, mosquitto: MosquittoProcess, sqlite_url: str
) -> Iterator[TestClient]:
    with Api(gateway.db_path, mosquitto, sqlite_url, confirm_check_s=0.2) as client:
        yield client


# type, params, whether telemetry confirms it (see schemas.commands.COMMAND_SPECS)
EVERY_COMMAND: list[tuple[str, dict[str, Any], bool]] = [
    ("lock", {}, True),
    ("unlock", {}, True),
    ("horn_and_lights", {}, True),
    ("locate", {}, True),
    ("climate_start", {"target_temperature_c": 22.5}, True),
    ("climate_stop", {}, False),
    ("charge_limit", {"percent": 100}, True),
    ("charging_start", {}, True),
    ("charging_stop", {}, True),
    ("close_windows", {}, True),
    ("immobilize", {}, False),
    ("speed_limit", {"kmh": 90}, False),
    ("request_diagnostics", {}, False),
    ("set_reporting_interval", {"seconds": 1}, False),
    ("release_immobilizer", {}, False),
]


def test_every_command_type_end_to_end_with_confirmation_by_telemetry(
    api: TestClient, mosquitto: MosquittoProcess
) -> None:
    unit = UnitThread(mosquitto, parked_ev()).start()
    known_and_online(api)
    try:
        for type_, params, confirmable in EVERY_COMMAND:
            created = api.post(
                f"/v1/vehicles/{VIN}/commands", json={"type": type_, "params": params}
            )
            assert created.status_code == 201, (type_, created.text)
            command_id = created.json()["id"]
            done = wait_status(api, command_id, "succeeded")
            assert [t["status"] for t in done["transitions"]] == [
                "queued",
                "sent",
                "accepted",
                "succeeded",
            ], type_
            if confirmable:

                def confirmed(c: str = command_id) -> bool:
                    return get(api, c)["confirmation"] == "confirmed"

                wait_until(confirmed, what=f"{type_} confirmed by telemetry")
            else:
                assert done["confirmation"] == "not_applicable", type_
        # the unit's state shows the last ones: windows closed, charge limit 100
        state = api.get(f"/v1/vehicles/{VIN}").json()["state"]
        assert state["Vehicle.Cabin.Door.Row1.DriverSide.Window.Position"]["value"] == 0
        assert state["Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"]["value"] == 100
        assert unit.stats().commands_succeeded == len(EVERY_COMMAND)
    finally:
        unit.stop()


def test_offline_vehicle_back_before_expiry_gets_the_command_once(
    api: TestClient, mosquitto: MosquittoProcess
) -> None:
    first = UnitThread(mosquitto, parked_ev()).start()
    known_and_online(api)
    first.stop()
    wait_until(
        lambda: api.get(f"/v1/vehicles/{VIN}").json()["online"] is False,
        what="the vehicle to be offline",
    )
    command = api.post(f"/v1/vehicles/{VIN}/commands", json={"type": "lock", "ttl_s": 60}).json()
    assert command["status"] == "queued"
    again = UnitThread(mosquitto, parked_ev()).start()
    try:
        wait_status(api, command["id"], "succeeded")
        wait_until(lambda: again.stats().commands_received >= 1, what="the command")
        assert again.stats().commands_received == 1
    finally:
        again.stop()


def test_offline_vehicle_back_after_expiry_never_gets_the_command(
    api: TestClient, mosquitto: MosquittoProcess
) -> None:
    first = UnitThread(mosquitto, parked_ev()).start()
    known_and_online(api)
    first.stop()
    wait_until(
        lambda: api.get(f"/v1/vehicles/{VIN}").json()["online"] is False,
        what="the vehicle to be offline",
    )
    observer = Observer(mosquitto, VIN)
    command = api.post(f"/v1/vehicles/{VIN}/commands", json={"type": "unlock", "ttl_s": 1}).json()
    assert command["status"] == "queued"
    wait_status(api, command["id"], "expired", timeout=10)
    again = UnitThread(mosquitto, parked_ev()).start()
    try:
        known_and_online(api)
        # a few reports later, still nothing reached the unit
        seen = again.stats().published
        wait_until(lambda: again.stats().published >= seen + 5, what="more reports")
        assert again.stats().commands_received == 0
        assert get(api, command["id"])["status"] == "expired"
    finally:
        again.stop()
    assert observer.stop() == []  # the broker never carried it


def test_command_service_restart_with_commands_in_flight(
    gateway: GatewayProcess, mosquitto: MosquittoProcess, sqlite_url: str
) -> None:
    unit = UnitThread(mosquitto, parked_ev(), command_delay_s=2.0).start()
    try:
        with Api(gateway.db_path, mosquitto, sqlite_url) as api:
            known_and_online(api)
            slow = api.post(f"/v1/vehicles/{VIN}/commands", json={"type": "lock"}).json()
            wait_status(api, slow["id"], "accepted")
        # the service is down while the unit finishes: its answer waits in the broker, in
        # the service's persistent session
        wait_until(lambda: unit.stats().commands_succeeded == 1, what="the unit to finish")
        with Api(gateway.db_path, mosquitto, sqlite_url) as api:
            done = wait_status(api, slow["id"], "succeeded")
            assert [t["status"] for t in done["transitions"]] == [
                "queued",
                "sent",
                "accepted",
                "succeeded",
            ]
    finally:
        unit.stop()
    # a command queued for an offline vehicle expires correctly across a restart
    with Api(gateway.db_path, mosquitto, sqlite_url) as api:
        wait_until(
            lambda: api.get(f"/v1/vehicles/{VIN}").json()["online"] is False,
            what="the vehicle to be offline",
        )
        queued = api.post(f"/v1/vehicles/{VIN}/commands", json={"type": "lock", "ttl_s": 2}).json()
        assert queued["status"] == "queued"
    time.sleep(2.5)  # the service is down across the expiry on purpose (a clock, not a wait)
    with Api(gateway.db_path, mosquitto, sqlite_url) as api:
        wait_status(api, queued["id"], "expired", timeout=10)
