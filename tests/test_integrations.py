"""The MQTT fan-out of alerts and its credentials, attacked with raw MQTT against a real
``telematics up`` (closed broker with Dynamic Security, gateway, API with the rules worker
and the fan-out; decision 0017).

* a fleet manager creates an integration credential through the API; it reads its
  organization's alerts on ``integrations/<account id>/alerts``: a vehicle's ignition
  turning on arrives there as ``alert.raised``, signed by nobody but carried by the broker
  that only the gateway's service account may publish on;
* it may subscribe to nothing else (another organization's topic, wildcards, shared
  subscriptions, telemetry, commands, ``$SYS``, ``$CONTROL``), publish nothing (its own
  topic included), and not take a vehicle's client id; a vehicle cannot subscribe to it;
* another organization's integration gets none of it; only administrators and the
  organization's fleet managers manage credentials (404 across organizations);
* a deleted credential is disconnected and refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker import free_port
from gateway.notify.mqtt import FANOUT_CURSOR, fanout_payload
from gateway.statedb import StateDatabase
from gateway.statedb.events import EventRecord
from gateway.statedb.integrations import IntegrationRepository
from tests.support.mqtt_raw import NOT_AUTHORIZED, Mqtt5Client
from tests.support.up import ADMIN_PASSWORD, Up, start
from tests.support.waiting import wait_until

PASSWORD = "integration-test-password-1"


@dataclass
class Org:
    id: int
    headers: dict[str, str]
    vin: str
    vin_password: str


@dataclass
class World:
    up: Up
    admin: dict[str, str]
    orgs: dict[str, Org] = field(default_factory=dict)
    clients: list[Mqtt5Client] = field(default_factory=list)

    def call(self, who: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = self.admin if who == "admin" else self.orgs[who].headers
        return httpx.request(method, f"{self.up.api}{path}", headers=headers, **kw)

    def connect(self, username: str, password: str, client_id: str) -> tuple[Mqtt5Client, int]:
        client, code = Mqtt5Client.connect(
            "127.0.0.1", self.up.mqtt_port, client_id, username=username, password=password
        )
        self.clients.append(client)
        return client, code

    def admitted(self, username: str, password: str) -> Mqtt5Client:
        """Connected as ``username`` (its own client id) once the broker sync loaded it."""
        found: list[Mqtt5Client] = []

        def attempt() -> bool:
            client, code = self.connect(username, password, username)
            if code == 0:
                found.append(client)
                return True
            client.close()
            return False

        wait_until(attempt, timeout=20, what=f"the broker to admit {username}")
        return found[0]


def _org(w: World, name: str, vin: str) -> Org:
    r = w.call("admin", "POST", "/v1/accounts", json={"kind": "organization", "name": name})
    account = r.json()["id"]
    email = f"manager-{name}-{os.getpid()}@example.com"
    user = {"email": email, "name": name, "role": "fleet_manager", "account_id": account,
            "password": PASSWORD}  # fmt: skip
    assert w.call("admin", "POST", "/v1/users", json=user).status_code == 201
    r = w.call("admin", "POST", "/v1/vehicles", json={"vin": vin, "account_id": account})
    assert r.status_code == 201, r.text
    return Org(account, w.up.login(email, PASSWORD), vin, r.json()["mqtt"]["password"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    up = start(tmp_path_factory.mktemp("integrations"), 1, (free_port(), free_port(), free_port()))
    try:
        w = World(up, up.login("admin@localhost", ADMIN_PASSWORD))
        w.orgs["A"] = _org(w, "a", "WNTEGRATE00000001")
        w.orgs["B"] = _org(w, "b", "WNTEGRATE00000002")
        yield w
        for client in w.clients:
            client.close()
    finally:
        if up.process.poll() is None:
            up.stop()


def _credential(w: World, who: str) -> dict[str, Any]:
    r = w.call(who, "POST", "/v1/integrations", json={"description": "home automation"})
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = r.json()
    assert body["topic"] == f"integrations/{w.orgs[who].id}/alerts"
    return body


def test_an_integration_reads_its_organizations_alerts_and_nothing_else(world: World) -> None:
    a, b = world.orgs["A"], world.orgs["B"]
    mine, theirs = _credential(world, "A"), _credential(world, "B")
    integration = world.admitted(mine["username"], mine["password"])
    other = world.admitted(theirs["username"], theirs["password"])
    for topic_filter in [
        theirs["topic"], "integrations/+/alerts", "integrations/#", "#", "+/+/+",
        f"$share/g/{mine['topic']}", "$share/g/#", "v1/vehicles/+/telemetry",
        f"v1/vehicles/{a.vin}/commands", f"v1/vehicles/{a.vin}/telemetry", "$SYS/#",
        "$CONTROL/dynamic-security/v1/response", f"{mine['topic']}/#",
    ]:  # fmt: skip
        assert integration.subscribe(topic_filter) == NOT_AUTHORIZED, topic_filter
    for topic in [mine["topic"], theirs["topic"], f"v1/vehicles/{a.vin}/telemetry",
                  f"v1/vehicles/{a.vin}/commands", "$CONTROL/dynamic-security/v1"]:  # fmt: skip
        assert integration.publish(topic, b'{"type": "alert.raised"}') == NOT_AUTHORIZED, topic
    assert integration.subscribe(mine["topic"]) == 1  # its own: granted
    assert other.subscribe(theirs["topic"]) == 1
    # it cannot take a vehicle's client id (and kick the unit off)
    _, code = world.connect(mine["username"], mine["password"], a.vin)
    assert code == NOT_AUTHORIZED
    # a vehicle cannot read the organization's alerts
    unit = world.admitted(a.vin, a.vin_password)
    assert unit.subscribe(mine["topic"]) == NOT_AUTHORIZED
    assert unit.subscribe("integrations/#") == NOT_AUTHORIZED
    # the van's ignition turns on: the alert reaches A's integration, and only A's
    now = time.time_ns() // 1_000_000
    sample = {"vin": a.vin, "seq": 1, "ts": now,
              "signals": {"Vehicle.LowVoltageSystemState": "ON", "Vehicle.Speed": 0.0}}  # fmt: skip
    assert unit.publish(f"v1/vehicles/{a.vin}/telemetry", json.dumps(sample).encode()) < 0x80
    got = integration.receive(timeout=30)
    assert got is not None, "no alert on the integration topic"
    topic, payload = got
    event = json.loads(payload)
    assert topic == mine["topic"]
    assert event["type"] == "alert.raised"
    assert event["data"]["vin"] == a.vin
    assert event["data"]["kind"] == "ignition"
    assert other.receive(timeout=3) is None
    # the same event is on A's stream log: the JSON is the stream's and the webhook's
    assert isinstance(event["id"], int)
    assert b.vin not in payload.decode()


def test_only_the_organizations_managers_manage_its_credentials(world: World) -> None:
    mine = _credential(world, "A")
    listed = world.call("A", "GET", "/v1/integrations").json()["items"]
    assert mine["id"] in [i["id"] for i in listed]
    assert all("password" not in i for i in listed)
    assert all(i["account_id"] == world.orgs["A"].id for i in listed)
    # another organization's manager: as missing as a credential that does not exist
    assert world.call("B", "DELETE", f"/v1/integrations/{mine['id']}").status_code == 404
    assert mine["id"] not in [i["id"] for i in world.call("B", "GET", "/v1/integrations")
                              .json()["items"]]  # fmt: skip
    r = world.call("B", "POST", "/v1/integrations", json={"account_id": world.orgs["A"].id})
    assert r.status_code == 404, r.text
    # the vehicle's own credentials are no way in either
    assert world.call("admin", "DELETE", "/v1/integrations/999999").status_code == 404


def test_a_deleted_credential_is_disconnected_and_refused(world: World) -> None:
    mine = _credential(world, "A")
    client = world.admitted(mine["username"], mine["password"])
    assert world.call("A", "DELETE", f"/v1/integrations/{mine['id']}").status_code == 204
    assert client.wait_closed(timeout=20), "the deleted credential stayed connected"
    _, code = world.connect(mine["username"], mine["password"], mine["username"])
    assert code >= 0x80


def test_the_credential_file_of_the_broker_holds_no_password_in_clear(world: World) -> None:
    mine = _credential(world, "B")
    world.admitted(mine["username"], mine["password"])
    texts = [p.read_text(errors="replace") for p in Path(world.up.data).rglob("*") if p.is_file()
             and p.stat().st_size < 5_000_000]  # fmt: skip
    assert not any(mine["password"] in t for t in texts)


def test_one_fan_out_publishes_and_another_takes_over_where_it_stopped(state_db_url: str) -> None:
    db = StateDatabase(state_db_url)
    db.upgrade()
    try:
        repo, now = IntegrationRepository(db), 1_000_000
        assert repo.take_cursor(FANOUT_CURSOR, "first", now=now, ttl_ms=15_000) == 0
        assert repo.take_cursor(FANOUT_CURSOR, "second", now=now + 1, ttl_ms=15_000) is None
        assert repo.advance_cursor(FANOUT_CURSOR, "first", 42, now=now + 2)
        assert not repo.advance_cursor(FANOUT_CURSOR, "second", 99, now=now + 3)
        # the first one dies: once its lease ran out, the second resumes after event 42
        assert repo.take_cursor(FANOUT_CURSOR, "second", now=now + 15_001, ttl_ms=15_000) == 42
        assert not repo.advance_cursor(FANOUT_CURSOR, "first", 50, now=now + 15_002)
    finally:
        db.dispose()


def test_the_fan_out_carries_alert_events_of_an_organization_only() -> None:
    def event(type_: str, account: int | None) -> EventRecord:
        return EventRecord(7, 1, type_, account, None, {"vin": "WNTEGRATE00000001"})

    out = fanout_payload(event("alert.raised", 3))
    assert out is not None
    assert out[0] == "integrations/3/alerts"
    assert json.loads(out[1])["type"] == "alert.raised"
    for other in (
        event("trip.finished", 3),
        event("command.updated", 3),
        event("alert.raised", None),
    ):
        assert fanout_payload(other) is None
