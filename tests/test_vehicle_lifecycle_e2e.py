"""The vehicle lifecycle end to end (issue 16): a real Mosquitto closed as under
``telematics up`` (password file, Dynamic Security, the gateway's service account), a real
``telematics gateway`` process admitting provisioned vehicles only, the API app with its
command service, and the state database on SQLite and on PostgreSQL.

The broker's vehicle identities come from the state database through the real
``BrokerAuthSync`` (the same ``broker_identities()`` mapping as ``telematics up``; the
test asks it to sync after each change instead of waiting for its poll). The unit is a
raw MQTT 5 client with the credentials the API handed out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from gateway import metrics
from gateway.api import ApiSettings, create_app
from gateway.broker import auth as broker_auth
from gateway.commands.service import CommandSettings
from gateway.settings import MqttSettings
from gateway.store import open_store
from tests.support.api import auth_settings_for_tests, bearer
from tests.support.broker import ClosedBroker, start_closed_broker
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest import counter, now_ms, telemetry
from tests.support.mqtt_raw import NOT_AUTHORIZED, Mqtt5Client
from tests.support.waiting import wait_until

VIN = "WLYFE000000000009"
PASSWORD = "lifecycle-e2e-password"
SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"


@dataclass
class Stack:
    api: TestClient
    closed: ClosedBroker
    db_path: Path
    admin: dict[str, str]
    clients: list[Mqtt5Client] = field(default_factory=list)

    def as_(self, headers: dict[str, str], method: str, url: str, **kw: Any) -> Response:
        return self.api.request(method, url, headers=headers, **kw)

    def owner(self, email: str) -> dict[str, str]:
        r = self.api.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": email}
        )
        assert r.status_code == 202, r.text
        r = self.api.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def sync_broker(self) -> None:
        """Hand the state database's vehicle identities to the broker sync and apply them."""
        accounts = self.api.app.state.auth.accounts  # type: ignore[attr-defined]
        self.closed.source.set(
            [broker_auth.VehicleIdentity(vin, h) for vin, h in accounts.broker_identities()]
        )
        self.closed.sync.sync_once()

    def unit(self, password: str | None) -> tuple[Mqtt5Client, int]:
        broker = self.closed.broker
        client, code = Mqtt5Client.connect(
            broker.host, broker.port, VIN, username=VIN, password=password
        )
        if code == 0:
            self.clients.append(client)  # closed at the end of the test
        else:
            client.close()
        return client, code

    def stored(self) -> float:
        return counter(self.db_path, metrics.SAMPLES_STORED)


@pytest.fixture
def stack(tmp_path: Path, state_db_url: str) -> Iterator[Stack]:
    closed = start_closed_broker(tmp_path)
    service_user, service_password = closed.service
    password_file = tmp_path / "service-password"
    password_file.write_text(service_password)
    db_path = tmp_path / "data" / "telemetry.db"
    mqtt = MqttSettings(
        host=closed.broker.host,
        port=closed.broker.port,
        username=service_user,
        password=service_password,
    )
    settings = ApiSettings(
        db_path=db_path,
        commands=CommandSettings(state_db_url=state_db_url, mqtt=mqtt),
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(),
    )
    gateway = GatewayProcess(
        closed.broker,
        db_path.parent,
        "gateway-1",
        (
            "--require-provisioned",
            "--state-db-url",
            state_db_url,
            "--mqtt-username",
            service_user,
            "--mqtt-password-file",
            str(password_file),
        ),
    )
    try:
        with TestClient(create_app(settings)) as api:
            wait_until(api.app.state.commands.connected.is_set)  # type: ignore[attr-defined]
            gateway.start()
            stack = Stack(api, closed, db_path, bearer())
            try:
                yield stack
            finally:
                for client in stack.clients:
                    client.close()
                gateway.stop()
    finally:
        closed.sync.stop()
        closed.broker.stop()


def report(unit: Mqtt5Client, seq: int, **signals: float) -> None:
    body = orjson.dumps({"vin": VIN, "seq": seq, "ts": now_ms(), "signals": signals})
    assert unit.publish(telemetry(VIN), body) < 0x80


def test_a_car_is_built_sold_sold_on_and_decommissioned(stack: Stack) -> None:
    """The old owner sees none of the new owner's data and the new owner none of the old;
    the old credentials and the old command die with the transfer; a decommissioned VIN
    cannot connect."""
    code = stack.as_(stack.admin, "POST", f"/v1/vehicles/{VIN}/lifecycle/registration").json()[
        "pairing_code"
    ]
    seller = stack.owner("seller@example.com")
    buyer = stack.owner("buyer@example.com")
    claimed = stack.as_(seller, "POST", f"/v1/vehicles/{VIN}/claim", json={"code": code})
    assert claimed.status_code == 201, claimed.text
    first_password = claimed.json()["mqtt"]["password"]
    stack.sync_broker()

    # the first holder's car reports, and gets a command it never answers
    old_unit, rc = stack.unit(first_password)
    assert rc == 0
    for seq in (1, 2, 3):
        report(old_unit, seq, **{SPEED: 50.0, LAT: 48.1})
    wait_until(lambda: stack.stored() >= 3, what="the first holder's samples")
    command = stack.as_(seller, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "lock"})
    assert command.status_code == 201, command.text

    # sold on: offered, accepted, new credentials
    tid = stack.as_(
        seller, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    ).json()["id"]
    accepted = stack.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={})
    assert accepted.status_code == 200, accepted.text
    second_password = accepted.json()["vehicle"]["mqtt"]["password"]
    stack.sync_broker()

    # the old credentials stop working at once; the old command is cancelled, never delivered
    assert old_unit.wait_closed(timeout=10)
    assert stack.unit(first_password)[1] == NOT_AUTHORIZED
    old = stack.as_(stack.admin, "GET", f"/v1/commands/{command.json()['id']}").json()
    assert (old["status"], old["reason"]) == ("cancelled", "vehicle_revoked")

    # the new holder's unit starts over at seq 1, elsewhere
    new_unit, rc = stack.unit(second_password)
    assert rc == 0
    for seq in (1, 2):
        report(new_unit, seq, **{SPEED: 10.0, LAT: 52.5})
    wait_until(lambda: stack.stored() >= 5, what="the new holder's samples")
    assert counter(stack.db_path, metrics.SAMPLES_DUPLICATE) == 0

    # the buyer sees only their own period
    state = stack.as_(buyer, "GET", f"/v1/vehicles/{VIN}").json()
    assert {name: s["value"] for name, s in state["state"].items()} == {SPEED: 10.0, LAT: 52.5}
    history = stack.as_(
        buyer, "GET", f"/v1/vehicles/{VIN}/history", params={"signals": LAT, "start": 0}
    ).json()["items"]
    assert [(p["seq"], p["values"][LAT]) for p in history] == [(1, 52.5), (2, 52.5)]
    assert stack.as_(buyer, "GET", f"/v1/vehicles/{VIN}/commands").json()["items"] == []
    # the seller sees nothing of the buyer's (nor the car any more)
    for url in (f"/v1/vehicles/{VIN}", f"/v1/vehicles/{VIN}/history?signals={LAT}&start=0"):
        r = stack.as_(seller, "GET", url)
        assert r.status_code == 404, r.text
    # the seller's period is kept, apart from the buyer's
    reader = open_store(stack.db_path, readonly=True)
    try:
        kept = reader.history(VIN, [LAT], tenure=1, start=0, end=2**62, limit=100)
        assert [(p.seq, p.values[LAT]) for p in kept] == [(1, 48.1), (2, 48.1), (3, 48.1)]
    finally:
        reader.close()

    # decommissioned: the unit is cut off and can never connect again
    r = stack.as_(
        stack.admin, "POST", f"/v1/vehicles/{VIN}/decommission", json={"reason": "scrapped"}
    )
    assert r.status_code == 200, r.text
    stack.sync_broker()
    assert new_unit.wait_closed(timeout=10)
    assert stack.unit(second_password)[1] == NOT_AUTHORIZED
    again = stack.as_(stack.admin, "POST", "/v1/vehicles", json={"vin": VIN, "account_id": 2})
    assert again.status_code == 409, again.text
    stack.sync_broker()
    assert stack.unit(second_password)[1] == NOT_AUTHORIZED
