"""Issue 16: a transfer or a decommissioning cuts the previous unit off the broker at the
next sync, and leaves nothing of it there: its credential is refused, its persistent
session (with its subscriptions and whatever waits in it) is gone, and so is its retained
status.

A real Mosquitto closed as under ``telematics up`` (password file, Dynamic Security, the
sync with the installation's session purger), the API app on the state database (SQLite
and PostgreSQL), and raw MQTT 5 clients. The broker's identities come from the state
database with each VIN's holding period, as ``telematics up`` hands them over; the test
asks the sync to run after each change instead of waiting for its poll (0.5 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from gateway.api import ApiSettings, create_app
from gateway.broker import auth as broker_auth
from gateway.commands.service import CommandSettings
from gateway.settings import MqttSettings
from tests.support.api import auth_settings_for_tests, bearer
from tests.support.broker import ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import NOT_AUTHORIZED, Mqtt5Client
from tests.support.waiting import wait_until

VIN = "WLYFE000000000017"
PASSWORD = "lifecycle-cutoff-password"
STATUS = f"v1/vehicles/{VIN}/status"
COMMANDS = f"v1/vehicles/{VIN}/commands"


@dataclass
class Stack:
    api: TestClient
    closed: ClosedBroker
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
        """What ``telematics up`` hands the sync: each VIN's hash and holding period."""
        accounts = self.api.app.state.auth.accounts  # type: ignore[attr-defined]
        holders = accounts.active_tenures()
        self.closed.source.set(
            [
                broker_auth.VehicleIdentity(
                    vin, h, holder=holders[vin][0] if vin in holders else None
                )
                for vin, h in accounts.broker_identities()
            ]
        )
        self.closed.sync.sync_once()

    def connect(self, password: str, **kw: Any) -> tuple[Mqtt5Client, int]:
        broker = self.closed.broker
        client, code = Mqtt5Client.connect(
            broker.host, broker.port, VIN, username=VIN, password=password, **kw
        )
        self.clients.append(client)
        return client, code

    def retained_status(self) -> bytes | None:
        """The retained status a new subscriber gets (the gateway's service account)."""
        broker = self.closed.broker
        user, password = self.closed.service
        observer, code = Mqtt5Client.connect(
            broker.host,
            broker.port,
            f"observer-{len(self.clients)}",
            username=user,
            password=password,
        )
        self.clients.append(observer)
        assert code == 0
        assert observer.subscribe(STATUS) == 1
        got = observer.receive(timeout=1.0)
        observer.disconnect()
        return None if got is None else got[1]


@pytest.fixture
def stack(tmp_path: Path, state_db_url: str) -> Iterator[Stack]:
    closed = start_closed_broker(tmp_path, purge=True)
    service_user, service_password = closed.service
    mqtt = MqttSettings(
        host=closed.broker.host,
        port=closed.broker.port,
        username=service_user,
        password=service_password,
    )
    settings = ApiSettings(
        db_path=tmp_path / "data" / "telemetry.db",
        commands=CommandSettings(state_db_url=state_db_url, mqtt=mqtt),
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(),
    )
    try:
        with TestClient(create_app(settings)) as api:
            stack = Stack(api, closed, bearer())
            try:
                yield stack
            finally:
                for client in stack.clients:
                    client.close()
    finally:
        closed.sync.stop()
        closed.broker.stop()


def test_transfer_and_decommission_leave_nothing_of_the_previous_unit_on_the_broker(
    stack: Stack,
) -> None:
    code = stack.as_(stack.admin, "POST", f"/v1/vehicles/{VIN}/lifecycle/registration").json()[
        "pairing_code"
    ]
    seller = stack.owner("seller@example.com")
    buyer = stack.owner("buyer@example.com")
    claimed = stack.as_(seller, "POST", f"/v1/vehicles/{VIN}/claim", json={"code": code})
    assert claimed.status_code == 201, claimed.text
    first_password = claimed.json()["mqtt"]["password"]
    stack.sync_broker()

    # the seller's unit: a persistent session subscribed to its commands, a retained status
    old_unit, rc = stack.connect(first_password, clean_start=False, session_expiry=3600)
    assert rc == 0
    assert old_unit.subscribe(COMMANDS) == 1
    assert old_unit.publish(STATUS, b'{"state": "online", "ts": 1}', retain=True) < 0x80
    assert stack.retained_status() == b'{"state": "online", "ts": 1}'  # (the check can fail)

    tid = stack.as_(
        seller, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer@example.com"}
    ).json()["id"]
    accepted = stack.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={})
    assert accepted.status_code == 200, accepted.text
    second_password = accepted.json()["vehicle"]["mqtt"]["password"]
    stack.sync_broker()

    # the seller's unit is off, its credential refused (so it can subscribe to nothing)
    assert old_unit.wait_closed(timeout=10)
    assert stack.connect(first_password)[1] == NOT_AUTHORIZED
    assert stack.connect(first_password, clean_start=False, session_expiry=3600)[1] == (
        NOT_AUTHORIZED
    )
    # its status is not replayed to anyone
    assert stack.retained_status() is None
    # the buyer's unit finds no session: no subscription, nothing queued
    new_unit, rc = stack.connect(second_password, clean_start=False, session_expiry=3600)
    assert rc == 0
    assert new_unit.session_present is False
    assert new_unit.receive(timeout=0.5) is None
    assert new_unit.subscribe(COMMANDS) == 1
    assert new_unit.publish(STATUS, b'{"state": "online", "ts": 2}', retain=True) < 0x80
    assert stack.retained_status() == b'{"state": "online", "ts": 2}'

    # decommissioned: the unit is off, refused, and its retained status gone
    r = stack.as_(
        stack.admin, "POST", f"/v1/vehicles/{VIN}/decommission", json={"reason": "scrapped"}
    )
    assert r.status_code == 200, r.text
    stack.sync_broker()
    assert new_unit.wait_closed(timeout=10)
    assert stack.connect(second_password)[1] == NOT_AUTHORIZED
    assert stack.retained_status() is None


def test_a_unit_of_the_previous_holder_that_slips_back_before_the_reload_is_cut_off(
    stack: Stack,
) -> None:
    """The sync purges a passed-on VIN's session before the reload (so the next holder's
    unit never finds it) and again after: an old unit that reconnected in between, with
    its still valid password, is gone too, with the status it published meanwhile."""
    seller = stack.owner("seller2@example.com")
    buyer = stack.owner("buyer2@example.com")
    r = stack.as_(seller, "POST", "/v1/vehicles", json={"vin": VIN})
    assert r.status_code == 201, r.text
    first_password = r.json()["mqtt"]["password"]
    stack.sync_broker()
    tid = stack.as_(
        seller, "POST", f"/v1/vehicles/{VIN}/transfers", json={"to_email": "buyer2@example.com"}
    ).json()["id"]
    assert stack.as_(buyer, "POST", f"/v1/transfers/{tid}/accept", json={}).status_code == 200

    sync = stack.closed.sync
    real_reload = sync._reload
    back: list[Mqtt5Client] = []

    def reconnect_then_reload() -> None:
        # between the first purge and the reload: the old password still works
        unit, rc = stack.connect(first_password, clean_start=False, session_expiry=3600)
        assert rc == 0
        assert unit.subscribe(COMMANDS) == 1
        assert unit.publish(STATUS, b'{"state": "online", "ts": 3}', retain=True) < 0x80
        back.append(unit)
        real_reload()

    sync._reload = reconnect_then_reload
    try:
        stack.sync_broker()
    finally:
        sync._reload = real_reload
    assert back, "the reload ran"
    wait_until(lambda: back[0].wait_closed(timeout=0.2), what="the old unit to be cut off")
    assert stack.retained_status() is None
    assert stack.connect(first_password)[1] == NOT_AUTHORIZED
