"""``telematics up --demo``, the README's main command, end to end as a user runs it.

A closed installation: the private broker refuses anonymous clients, the demo vehicles are
provisioned into the organization "Demo Fleet" and log in with their own credentials, the
first administrator and the demo fleet manager can log in, commands are signed and run,
a certificate-only vehicle reports over the TLS listener, and no secret shows up in what the
processes print, except the passwords shown once on purpose.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker import free_port
from tests.support.mqtt_raw import Mqtt5Client
from tests.support.up import ADMIN_PASSWORD, Up, online, start
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port()


@pytest.fixture
def up(tmp_path: Path, ports: tuple[int, int, int]) -> Iterator[Up]:
    running = start(tmp_path, 1, ports)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()


def test_demo_is_closed_provisioned_and_works(up: Up, tmp_path: Path) -> None:
    admin = up.login("admin@localhost", ADMIN_PASSWORD)
    wait_until(lambda: len(online(up, admin)) == 2, timeout=60, what="the demo vehicles")

    # the fleet manager's password is printed once, in the banner
    banner = up.text()
    match = re.search(r"e-mail\s+fleet@demo\.local\s+password\s+(\S+)", banner)
    assert match, banner
    manager = up.login("fleet@demo.local", match[1])
    assert "log in   curl" in banner
    vins = online(up, manager)
    assert len(vins) == 2
    # the demo organization's depot and old-town zone (issue 13)
    fences = httpx.get(f"{up.api}/v1/geofences", headers=manager).json()["items"]
    names = {f["properties"]["name"] for f in fences}
    assert names == {"Depot Großmarkthalle", "City centre (Altstadt)"}, fences

    # a signed command runs in a simulated unit and is confirmed
    created = httpx.post(
        f"{up.api}/v1/vehicles/{vins[0]}/commands",
        json={"type": "horn_and_lights"},
        headers=manager,
    )
    assert created.status_code == 201, created.text

    def finished() -> Any:
        body = httpx.get(f"{up.api}/v1/commands/{created.json()['id']}", headers=manager).json()
        return body["status"] if body["terminal"] else None

    wait_until(finished, timeout=30, what="the command to finish")
    assert finished() == "succeeded"

    # anonymous MQTT clients are refused by the private broker
    client, code = Mqtt5Client.connect("127.0.0.1", up.mqtt_port, "anonymous")
    client.close()
    assert code == 0x87

    # a certificate-only vehicle over the TLS listener
    vin = "WCERT000000000001"
    provisioned = httpx.post(
        f"{up.api}/v1/vehicles",
        json={"vin": vin, "credentials": "certificate", "label": "TLS van"},
        headers=manager,
    )
    assert provisioned.status_code == 201, provisioned.text
    assert provisioned.json()["mqtt"]["password"] is None
    # it is told the TLS listener, the only one it can log in to without a password
    assert provisioned.json()["mqtt"]["url"] == f"mqtts://127.0.0.1:{up.tls_port}"
    issued = subprocess.run(
        [sys.executable, "-m", "gateway", "pki", "client", vin, "--data-dir", str(up.data)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert issued.returncode == 0, issued.stderr
    pki = up.data / "pki"
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(pki / "clients" / f"{vin}.crt", pki / "clients" / f"{vin}.key")

    def tls_connects() -> bool:
        client, code = Mqtt5Client.connect(
            "127.0.0.1", up.tls_port, vin, ssl_context=context, server_hostname="localhost"
        )
        if code != 0:
            client.close()
            return False
        now = time.time_ns() // 1_000_000
        sample = {"vin": vin, "seq": 1, "ts": now, "signals": {"Vehicle.Speed": 12.5}}
        reason = client.publish(f"v1/vehicles/{vin}/telemetry", json.dumps(sample).encode())
        client.disconnect()
        return reason < 0x80

    wait_until(tls_connects, timeout=20, what="the TLS vehicle to be let in")
    wait_until(
        lambda: httpx.get(f"{up.api}/v1/vehicles/{vin}", headers=manager).status_code == 200,
        what="the TLS vehicle's sample",
    )

    # what the processes printed holds no secret but the passwords shown once on purpose
    assert up.stop() == 0
    printed = up.text()
    secrets_dir = up.data / "secrets"
    unit_passwords = [
        v["mqtt_password"]
        for v in json.loads((secrets_dir / "demo-units.json").read_text())["vehicles"]
    ]
    never_printed = [
        ADMIN_PASSWORD,
        (secrets_dir / "mqtt-service.password").read_text().strip(),
        (secrets_dir / "mqtt-broker-admin.password").read_text().strip(),
        (up.data / "auth-secret").read_text().strip(),
        admin["Authorization"].split()[1],
        *unit_passwords,
    ]
    for secret in never_printed:
        assert secret not in printed
    assert printed.count(match[1]) == 1
    # TELEMATICS_ADMIN_PASSWORD was set and chose the first administrator's password: no
    # process may say it was ignored (the API under `up` said so on the very first start)
    assert "TELEMATICS_ADMIN_PASSWORD is ignored" not in printed
    for path in secrets_dir.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path


def test_a_second_start_reuses_the_installation(
    up: Up, tmp_path: Path, ports: tuple[int, int, int]
) -> None:
    admin = up.login("admin@localhost", ADMIN_PASSWORD)
    wait_until(lambda: len(online(up, admin)) == 2, timeout=60, what="the demo vehicles")
    assert up.stop() == 0
    again = start(tmp_path, 2, ports)
    try:
        admin = again.login("admin@localhost", ADMIN_PASSWORD)
        # the same vehicles come back with the credentials provisioned the first time
        wait_until(lambda: len(online(again, admin)) == 2, timeout=60, what="the vehicles")
        printed = again.text()
        assert "shown only this once" not in printed
        # the variable is still set at this second start: said once, not once per process
        assert printed.count("TELEMATICS_ADMIN_PASSWORD is ignored") == 1, printed
        audit = httpx.get(
            f"{again.api}/v1/audit",
            params={"action": "vehicle_provision", "limit": 100},
            headers=admin,
        ).json()["items"]
        assert len(audit) == 2  # provisioned once, not again
    finally:
        assert again.stop() == 0


def test_a_unit_connecting_right_after_the_api_answers_is_accepted(up: Up) -> None:
    """``POST /v1/vehicles`` and a new password used to answer before the broker had the new
    credentials (it syncs every half second), so a unit connecting at once got CONNACK 0x87
    for about a second. The API now answers once the broker has loaded them, as
    ``telematics vehicle add`` does, and says so in ``Broker-Applied``."""
    match = re.search(r"e-mail\s+fleet@demo\.local\s+password\s+(\S+)", up.text())
    assert match, up.text()
    manager = up.login("fleet@demo.local", match[1])
    vin = "WVWZZZ1JZXW000077"

    def connack(password: str) -> int:
        client, code = Mqtt5Client.connect(
            "127.0.0.1", up.mqtt_port, vin, username=vin, password=password
        )
        client.close()
        return code

    r = httpx.post(f"{up.api}/v1/vehicles", json={"vin": vin}, headers=manager, timeout=30)
    assert r.status_code == 201, r.text
    first = r.json()["mqtt"]["password"]
    assert connack(first) == 0  # at once: no 0x87 window
    assert r.headers["Broker-Applied"] == "true"

    r = httpx.post(f"{up.api}/v1/vehicles/{vin}/credentials", headers=manager, timeout=30)
    assert r.status_code == 200, r.text
    second = r.json()["mqtt"]["password"]
    assert connack(second) == 0
    assert connack(first) == 0x87  # the old one is already gone
    assert r.headers["Broker-Applied"] == "true"


def test_a_revoked_unit_is_refused_as_soon_as_the_api_answers(up: Up) -> None:
    """``DELETE /v1/vehicles/{vin}`` answered before the broker had dropped the login: for a
    quarter of a second the revoked password still logged in (found trying the product from
    outside, a unit reconnecting at once got in). The API now answers once the broker has
    dropped it, as provisioning does."""
    match = re.search(r"e-mail\s+fleet@demo\.local\s+password\s+(\S+)", up.text())
    assert match, up.text()
    manager = up.login("fleet@demo.local", match[1])
    vin = "WVWZZZ1JZXW000078"
    r = httpx.post(f"{up.api}/v1/vehicles", json={"vin": vin}, headers=manager, timeout=30)
    assert r.status_code == 201, r.text
    password = r.json()["mqtt"]["password"]

    def connack() -> int:
        client, code = Mqtt5Client.connect(
            "127.0.0.1", up.mqtt_port, vin, username=vin, password=password
        )
        client.close()
        return code

    assert connack() == 0
    r = httpx.delete(f"{up.api}/v1/vehicles/{vin}", headers=manager, timeout=30)
    assert r.status_code == 200, r.text
    assert connack() == 0x87  # at once: no window for the revoked password
    assert r.headers["Broker-Applied"] == "true"
