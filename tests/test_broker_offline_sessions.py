"""Revoking a vehicle whose unit is offline with a persistent session crashed the private
broker (Mosquitto 2.0.11 asserts in ``session_expiry__remove`` or segfaults a moment later).

Mosquitto adds a disconnected client's session to its expiry list; kicking that client again
(a reload that drops its password, the Dynamic Security plugin deleting its client) adds the
same entry a second time, and the list is corrupt from then on (eclipse-mosquitto/mosquitto
pull request 3341, fixed upstream after 2.0.11). Found when the web tests revoked a car of
their own after stopping its unit: the broker died twice within a minute. A new password
for a unit that is offline with a session did the same (decision 0034)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.broker import free_port
from tests.support.mqtt_raw import Mqtt5Client
from tests.support.up import Up, start


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    running = start(tmp_path, 1, (free_port(), free_port(), free_port()))
    try:
        yield running
    finally:
        running.stop()


def _manager(up: Up) -> dict[str, str]:
    match = re.search(r"e-mail\s+fleet@demo\.local\s+password\s+(\S+)", up.text())
    assert match, up.text()
    return up.login("fleet@demo.local", match[1])


def _session_then_offline(up: Up, vin: str, password: str) -> None:
    """Connect as the contract asks (Clean Start 0, a session for an hour), then leave."""
    client, code = Mqtt5Client.connect(
        "127.0.0.1",
        up.mqtt_port,
        vin,
        username=vin,
        password=password,
        clean_start=False,
        session_expiry=3600,
    )
    assert code == 0
    client.close()  # offline now; its session stays for an hour


def _units_go_offline_with_sessions(up: Up, manager: dict[str, str], vins: list[str]) -> None:
    for vin in vins:
        r = httpx.post(f"{up.api}/v1/vehicles", json={"vin": vin}, headers=manager, timeout=30)
        assert r.status_code == 201, r.text
        _session_then_offline(up, vin, r.json()["mqtt"]["password"])


def _another_change(up: Up, manager: dict[str, str], vin: str) -> None:
    """One more provisioning: another reload and plugin command on the (corrupt) list."""
    extra = vin[:-3] + "9" + vin[-2:]
    r = httpx.post(f"{up.api}/v1/vehicles", json={"vin": extra}, headers=manager, timeout=30)
    assert r.status_code == 201, r.text


def _broker_never_crashed(up: Up) -> None:
    log = Path(up.data / "broker" / "mosquitto.log").read_text(errors="replace")
    assert "Assertion" not in log
    assert "the private broker exited" not in up.text(), up.text()[-3000:]


def test_revoking_units_that_are_offline_with_a_session_keeps_the_broker_up(up: Up) -> None:
    manager = _manager(up)
    vins = [f"WVWZZZ1JZXW{n:06d}" for n in range(100, 106)]
    _units_go_offline_with_sessions(up, manager, vins)
    for vin in vins:
        r = httpx.delete(f"{up.api}/v1/vehicles/{vin}", headers=manager, timeout=30)
        assert r.status_code == 200, r.text
        _another_change(up, manager, vin)
    _broker_never_crashed(up)


def test_a_new_password_for_a_unit_offline_with_a_session_keeps_the_broker_up(up: Up) -> None:
    manager = _manager(up)
    vins = [f"WVWZZZ1JZXW{n:06d}" for n in range(200, 205)]
    _units_go_offline_with_sessions(up, manager, vins)
    for vin in vins:
        r = httpx.post(f"{up.api}/v1/vehicles/{vin}/credentials", headers=manager, timeout=30)
        assert r.status_code == 200, r.text
        _session_then_offline(up, vin, r.json()["mqtt"]["password"])  # the new password
        _another_change(up, manager, vin)
    _broker_never_crashed(up)
