"""Abuse suite, ownership and accounts (issue 10, items 2, 3, 9, 10 and the low ones): the
reproducers of the report, run as the attacker (or the careless operator) ran them, against
the real parts: the API app with its command service, the state database on SQLite and on
PostgreSQL, real ``telematics gateway`` processes writing the real telemetry store, a real
Mosquitto, and simulated in-car units (``device_sim``) where a car has to answer.

Each test failed on the code before the fix; what it failed on is said in its docstring.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from device_sim.city import MUNICH
from device_sim.unit import SimulatedUnit, UnitSettings, wall_clock_ms
from device_sim.vehicle import SimulatedVehicle, VehicleProfile
from gateway import metrics
from gateway.api import ApiSettings, create_app
from gateway.broker import MosquittoProcess
from gateway.commands.service import CommandSettings
from gateway.core.ratelimit import Limit
from gateway.settings import MqttSettings
from gateway.store import IngestBatch, open_store
from schemas import Sample
from tests.support.api import TEST_ADMIN_EMAIL, auth_settings_for_tests, bearer
from tests.support.commands_api import Observer
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest import counter, now_ms, publish, query, telemetry
from tests.support.waiting import wait_until

VIN = "WABUSE00000000001"
PASSWORD = "abuse-password-1"
SPEED = "Vehicle.Speed"
LAT = "Vehicle.CurrentLocation.Latitude"
LON = "Vehicle.CurrentLocation.Longitude"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


# --- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """The API (as the first administrator) on one state database, the telemetry store it
    shares with the gateway processes, and the broker."""

    api: TestClient
    broker: MosquittoProcess
    db_path: Path
    state_db_url: str
    tmp: Path
    admin: dict[str, str] = field(default_factory=dict)
    gateways: list[GatewayProcess] = field(default_factory=list)

    def as_(self, headers: dict[str, str], method: str, url: str, **kw: Any) -> Response:
        return self.api.request(method, url, headers=headers, **kw)

    def login(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        r = self.api.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def register(self, email: str, name: str = "Someone") -> dict[str, str]:
        """A self-registered private owner, logged in."""
        r = self.api.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert r.status_code == 202, r.text
        return self.login(email)

    def organization(self, name: str, manager: str) -> tuple[int, dict[str, str]]:
        """An organization made by the administrator, with a fleet manager, logged in."""
        r = self.as_(
            self.admin, "POST", "/v1/accounts", json={"kind": "organization", "name": name}
        )
        assert r.status_code == 201, r.text
        account: int = r.json()["id"]
        self.user(self.admin, manager, "fleet_manager", account)
        return account, self.login(manager)

    def user(self, by: dict[str, str], email: str, role: str, account: int | None = None) -> int:
        body: dict[str, Any] = {"email": email, "name": email, "role": role, "password": PASSWORD}
        if account is not None:
            body["account_id"] = account
        r = self.as_(by, "POST", "/v1/users", json=body)
        assert r.status_code == 201, r.text
        user_id: int = r.json()["id"]
        return user_id

    def gateway(self) -> GatewayProcess:
        """A ``telematics gateway`` that admits provisioned vehicles only, as under
        ``telematics up``, reading them (and their holding periods) from our state DB."""
        gateway = GatewayProcess(
            self.broker,
            self.db_path.parent,
            "gateway-1",
            ("--require-provisioned", "--state-db-url", self.state_db_url),
        )
        self.gateways.append(gateway)
        gateway.start()
        return gateway


def make_stack(
    tmp_path: Path, broker: MosquittoProcess, state_db_url: str, **auth: Any
) -> Iterator[Stack]:
    db_path = tmp_path / "data" / "telemetry.db"
    settings = ApiSettings(
        db_path=db_path,
        commands=CommandSettings(
            state_db_url=state_db_url, mqtt=MqttSettings(host=broker.host, port=broker.port)
        ),
        state_db_url=state_db_url,
        auth=auth_settings_for_tests(**auth),
    )
    with TestClient(create_app(settings)) as api:
        wait_until(api.app.state.commands.connected.is_set)  # type: ignore[attr-defined]
        stack = Stack(api, broker, db_path, state_db_url, tmp_path, bearer())
        try:
            yield stack
        finally:
            for gateway in stack.gateways:
                if gateway.process is not None and gateway.process.poll() is None:
                    gateway.stop()


@pytest.fixture
def stack(tmp_path: Path, mosquitto: MosquittoProcess, state_db_url: str) -> Iterator[Stack]:
    yield from make_stack(tmp_path, mosquitto, state_db_url)


def error(r: Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return body["error"]


# --- item 2: a VIN's past must not follow it to the next holder -------------------------------


def report(broker: MosquittoProcess, seq: int, **signals: float) -> None:
    sample = {"vin": VIN, "seq": seq, "ts": now_ms(), "signals": signals}
    publish(broker, telemetry(VIN), orjson.dumps(sample))


def stored(stack: Stack) -> float:
    """Samples the gateway stored or dropped as duplicates, over all holders."""
    return counter(stack.db_path, metrics.SAMPLES_STORED) + counter(
        stack.db_path, metrics.SAMPLES_DUPLICATE
    )


def test_a_new_holder_of_a_revoked_vin_gets_none_of_its_past(stack: Stack) -> None:
    """The reproducer of item 2: organization 2 runs a van and revokes it; a self-registered
    owner provisions the VIN and reads positions, commands, grants and idempotency keys,
    while the new unit's seq 1..n are swallowed as duplicates of the old unit's. Before the
    fix the new owner read organization 2's latest position and charge, its history, its
    command, its grant; reusing its idempotency key answered 409; the new unit's samples
    were dropped as duplicates."""
    stack.gateway()
    org, manager = stack.organization("Org 2", "fleet@org2.example")
    assert stack.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    driver = stack.user(manager, "driver@org2.example", "driver")
    grant = stack.as_(
        manager,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"user_id": driver, "services": ["lock"]},
    )
    assert grant.status_code == 201, grant.text
    # the old unit: online, five positions, a fault, one refused signal
    publish(stack.broker, f"v1/vehicles/{VIN}/status", b'{"state": "online"}')
    for seq in range(1, 6):
        report(stack.broker, seq, **{SPEED: 100.0, LAT: 48.1, LON: 11.5, SOC: 80.0})
    event = {"vin": VIN, "seq": 1, "ts": now_ms(), "type": "dtc_set", "code": "P0301"}
    publish(stack.broker, f"v1/vehicles/{VIN}/events", orjson.dumps(event))
    report(stack.broker, 6, **{SPEED: 9999.0})
    wait_until(lambda: stored(stack) >= 6, what="the old unit's samples")
    old_command = stack.as_(
        {**manager, "Idempotency-Key": "retry-1"},
        "POST",
        f"/v1/vehicles/{VIN}/commands",
        json={"type": "lock"},
    )
    assert old_command.status_code == 201, old_command.text
    assert stack.as_(manager, "DELETE", f"/v1/vehicles/{VIN}").status_code == 200

    # a stranger registers and claims the VIN
    owner = stack.register("new-owner@example.com")
    claimed = stack.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN})
    assert claimed.status_code == 201, claimed.text
    claimed_at = claimed.json()["provisioned_at"]
    # nothing of the old holder before the new unit reports
    before = stack.as_(owner, "GET", f"/v1/vehicles/{VIN}")
    assert before.status_code == 200, before.text
    assert (before.json()["reported"], before.json()["state"]) == (False, {})
    history = stack.as_(
        owner, "GET", f"/v1/vehicles/{VIN}/history", params={"signals": SPEED, "start": 0}
    )
    assert history.json()["items"] == []
    assert stack.as_(owner, "GET", f"/v1/vehicles/{VIN}/commands").json()["items"] == []
    old_id = old_command.json()["id"]
    error(stack.as_(owner, "GET", f"/v1/commands/{old_id}"), 404, "command_not_found")
    grants = stack.as_(owner, "GET", f"/v1/vehicles/{VIN}/grants?include_revoked=true")
    assert grants.json()["items"] == []

    # the new unit starts its own seq at 1, elsewhere, with less to say
    publish(stack.broker, f"v1/vehicles/{VIN}/status", b'{"state": "online"}')
    for seq in range(1, 4):
        report(stack.broker, seq, **{SPEED: 10.0, LAT: 52.5, LON: 13.4})
    publish(stack.broker, f"v1/vehicles/{VIN}/events", orjson.dumps({**event, "ts": now_ms()}))
    report(stack.broker, 4, **{SPEED: 9999.0})
    wait_until(lambda: stored(stack) >= 10, what="the new unit's samples")
    assert counter(stack.db_path, metrics.SAMPLES_DUPLICATE) == 0  # not swallowed

    state = stack.as_(owner, "GET", f"/v1/vehicles/{VIN}")
    assert state.status_code == 200, state.text
    latest = {name: s["value"] for name, s in state.json()["state"].items()}
    assert latest == {SPEED: 10.0, LAT: 52.5, LON: 13.4}  # no old position, no old charge
    assert state.json()["first_seen"] >= claimed_at
    history = stack.as_(
        owner,
        "GET",
        f"/v1/vehicles/{VIN}/history",
        params={"signals": f"{SPEED},{LAT}", "start": 0},
    )
    assert [(p["seq"], p["values"][LAT]) for p in history.json()["items"]] == [
        (1, 52.5),
        (2, 52.5),
        (3, 52.5),
    ]
    # the old holder's idempotency key is not the new holder's business
    again = stack.as_(
        {**owner, "Idempotency-Key": "retry-1"},
        "POST",
        f"/v1/vehicles/{VIN}/commands",
        json={"type": "lock"},
    )
    assert again.status_code == 201, again.text
    assert again.json()["id"] != old_id
    listed = stack.as_(owner, "GET", f"/v1/vehicles/{VIN}/commands").json()["items"]
    assert [c["id"] for c in listed] == [again.json()["id"]]
    # the old holder's data is still there, in its own period: events and quarantine too
    events = query(
        stack.db_path,
        "SELECT v.tenure, count(*) FROM events e JOIN vehicles v ON v.id = e.vehicle_id "
        "WHERE v.vin = ? GROUP BY v.tenure ORDER BY v.tenure",
        VIN,
    )
    assert events == [(1, 1), (2, 1)]
    reader = open_store(stack.db_path, readonly=True)
    try:
        refused = reader.quarantine(limit=10, vin=VIN)
    finally:
        reader.close()
    # (a tenure of None counts as 0: it fails the comparison, as it must)
    assert sorted(q.tenure or 0 for q in refused if q.reason == "out_of_range") == [1, 2]
    # and the old holder no longer sees the VIN at all; the new holder's is its second period
    error(stack.as_(manager, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")
    assert claimed.json()["tenure"] == 2
    assert org


def test_a_vin_held_by_another_account_cannot_be_claimed(stack: Stack) -> None:
    """Claiming is first come, first served among unheld VINs only. Before the fix a claim
    of a held VIN answered the same 409 as re-adding one's own, naming no rule."""
    _, manager = stack.organization("Org 2", "fleet@org2.example")
    assert stack.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    squatter = stack.register("squatter@example.com")

    refused = error(
        stack.as_(squatter, "POST", "/v1/vehicles", json={"vin": VIN}),
        409,
        "vehicle_not_claimable",
    )
    assert "revoke" in refused["message"]
    error(
        stack.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}),
        409,
        "vehicle_already_provisioned",
    )
    registration = stack.as_(manager, "GET", f"/v1/vehicles/{VIN}/registration").json()
    assert registration["tenure"] == 1

    assert stack.as_(manager, "DELETE", f"/v1/vehicles/{VIN}").status_code == 200
    claimed = stack.as_(squatter, "POST", "/v1/vehicles", json={"vin": VIN})
    assert claimed.status_code == 201, claimed.text
    assert claimed.json()["tenure"] == 2
    audit = stack.as_(stack.admin, "GET", "/v1/audit", params={"action": "vehicle_provision"})
    outcomes = [(e["outcome"], (e["detail"] or {}).get("error")) for e in audit.json()["items"]]
    assert ("failed", "held by another account") in outcomes


# --- item 3: revocation ends the vehicle's open commands ---------------------------------------


class UnitThread:
    """A simulated in-car unit (device_sim) running on its own event loop in a thread, so
    the test can drive the API synchronously meanwhile."""

    def __init__(self, broker: MosquittoProcess, *, answers: bool, seed: int) -> None:
        vehicle = SimulatedVehicle(
            VIN,
            VehicleProfile.ELECTRIC_CAR,
            MUNICH,
            random.Random(seed),
            "Marienplatz",
            start_ms=wall_clock_ms(),
        )
        settings = UnitSettings(
            host=broker.host,
            port=broker.port,
            report_interval_s=0.2,
            reconnect_min_s=0.1,
            reconnect_max_s=0.4,
            drain_timeout_s=2.0,
            answers_commands=answers,
        )
        self.unit = SimulatedUnit(vehicle, settings)
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self.unit.run(self._stop))

    def start(self) -> UnitThread:
        self._thread.start()
        wait_until(lambda: self.unit.subscribed, what="the unit's command subscription")
        return self

    def stop(self) -> None:
        """A clean stop: the unit publishes its retained ``offline`` status."""
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()
        self._loop.close()


def command_status(stack: Stack, headers: dict[str, str], command_id: str) -> dict[str, Any]:
    r = stack.as_(headers, "GET", f"/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_revoking_a_vehicle_cancels_its_open_commands_and_the_next_holder_never_gets_them(
    stack: Stack,
) -> None:
    """Item 3, end to end: organization 2's unit has a command sent but unanswered (a
    silent unit) and, once offline, another queued; organization 2 revokes the vehicle; the
    next holder's unit comes online. Before the fix both commands stayed open after the
    revocation and the queued one was delivered, validly, to the new holder's unit."""
    stack.gateway()
    _, manager = stack.organization("Org 2", "fleet@org2.example")
    assert stack.as_(manager, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201

    old_unit = UnitThread(stack.broker, answers=False, seed=1).start()
    wait_until(
        lambda: stack.as_(manager, "GET", f"/v1/vehicles/{VIN}").json().get("online") is True,
        what="the old unit to be online",
    )
    sent = stack.as_(manager, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "locate"})
    assert sent.status_code == 201, sent.text
    wait_until(lambda: old_unit.unit.stats().commands_received == 1, what="the old unit's command")
    old_unit.stop()
    wait_until(
        lambda: stack.as_(manager, "GET", f"/v1/vehicles/{VIN}").json().get("online") is False,
        what="the old unit to be offline",
    )
    queued = stack.as_(
        manager, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "horn_and_lights"}
    )
    assert queued.status_code == 201, queued.text
    assert queued.json()["status"] == "queued"
    assert command_status(stack, manager, sent.json()["id"])["status"] == "sent"

    assert stack.as_(manager, "DELETE", f"/v1/vehicles/{VIN}").status_code == 200

    for made in (sent, queued):
        command = command_status(stack, stack.admin, made.json()["id"])
        assert (command["status"], command["reason"], command["terminal"]) == (
            "cancelled",
            "vehicle_revoked",
            True,
        )
        assert command["transitions"][-1]["event"] == "vehicle_revoked"

    # the next holder's unit comes online and gets only its holder's command
    owner = stack.register("new-owner@example.com")
    assert stack.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    observer = Observer(stack.broker, VIN)
    delivered: list[dict[str, Any]] = []
    try:
        new_unit = UnitThread(stack.broker, answers=True, seed=2).start()
        wait_until(
            lambda: stack.as_(owner, "GET", f"/v1/vehicles/{VIN}").json().get("online") is True,
            what="the new unit to be online",
        )
        mine = stack.as_(owner, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "lock"})
        assert mine.status_code == 201, mine.text
        wait_until(
            lambda: command_status(stack, owner, mine.json()["id"])["status"] == "succeeded",
            what="the new holder's command to succeed",
        )
        new_unit.stop()
    finally:
        # everything published on the VIN's command topic since the new holder's unit
        # came: one command, the new holder's (the old ones were published before, or never)
        delivered = observer.stop()
    assert [m["command_id"] for m in delivered] == [mine.json()["id"]]
    assert new_unit.unit.stats().commands_received == 1
    for made in (sent, queued):
        assert command_status(stack, stack.admin, made.json()["id"])["status"] == "cancelled"


# --- item 9: sharing by e-mail --------------------------------------------------------------


@pytest.fixture
def limited(tmp_path: Path, mosquitto: MosquittoProcess, state_db_url: str) -> Iterator[Stack]:
    """A stack with the default invitation limit (20 an hour, bursts of 10)."""
    yield from make_stack(
        tmp_path, mosquitto, state_db_url, invitation_limit=Limit(rate=20 / 3600, burst=10)
    )


def without_ids(body: dict[str, Any]) -> dict[str, Any]:
    """The answer without what differs between two invitations (id, address, times, the
    one-time token: present in both, decision 0023)."""
    assert body["accept_token"]
    return {
        k: v
        for k, v in body.items()
        if k not in {"id", "email", "accept_token"}
        and not k.startswith(("created_at", "expires_at"))
    }


def test_sharing_by_email_reveals_no_account_and_needs_the_recipients_consent(
    limited: Stack,
) -> None:
    """Item 9: a grant by e-mail answered 404 for an unknown address and 201 for a known one
    (so 200 probes told which accounts exist, without a limit), and put the car at once into
    the view of someone in another tenant. Now a grant goes only to a user of the vehicle's
    account; anyone else gets an invitation, answered alike whether or not the address has
    an account, that shares nothing until accepted; and invitations are rate limited."""
    stack = limited
    owner = stack.register("owner@example.com")
    assert stack.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    neighbour = stack.register("neighbour@example.com")

    # a direct grant to someone outside the account: like a user that does not exist
    known = stack.as_(
        owner,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"email": "neighbour@example.com", "services": ["lock"]},
    )
    unknown = stack.as_(
        owner,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"email": "nobody@example.com", "services": ["lock"]},
    )
    assert known.status_code == unknown.status_code == 404
    assert known.json()["error"]["message"].replace("neighbour", "X") == (
        unknown.json()["error"]["message"].replace("nobody", "X")
    )
    error(stack.as_(neighbour, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")

    # invitations: the same answer for an account and for no account
    answers = [
        stack.as_(
            owner,
            "POST",
            f"/v1/vehicles/{VIN}/invitations",
            json={"email": email, "services": ["read", "lock"]},
        )
        for email in ("neighbour@example.com", "nobody@example.com")
    ]
    assert [a.status_code for a in answers] == [201, 201]
    assert without_ids(answers[0].json()) == without_ids(answers[1].json())
    assert answers[0].json()["status"] == "pending"
    # nothing is shared before the recipient accepts
    assert stack.as_(neighbour, "GET", "/v1/vehicles").json()["items"] == []
    error(stack.as_(neighbour, "GET", f"/v1/vehicles/{VIN}"), 404, "vehicle_not_found")
    offered = stack.as_(neighbour, "GET", "/v1/invitations").json()["items"]
    assert [(i["vin"], i["services"]) for i in offered] == [(VIN, ["lock", "read"])]
    # someone else cannot accept it for them
    stranger = stack.register("stranger@example.com")
    error(
        stack.as_(stranger, "POST", f"/v1/invitations/{offered[0]['id']}/accept"),
        404,
        "invitation_not_found",
    )
    accepted = stack.as_(neighbour, "POST", f"/v1/invitations/{offered[0]['id']}/accept")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["services"] == ["lock", "read"]
    assert stack.as_(neighbour, "GET", f"/v1/vehicles/{VIN}/registration").status_code == 200
    error(
        stack.as_(neighbour, "POST", f"/v1/invitations/{offered[0]['id']}/accept"),
        409,
        "invitation_closed",
    )
    # the address without an account can register later and decline, with the token the
    # owner passed on (decision 0023: without it, whoever registered first would answer)
    later = stack.register("nobody@example.com")
    (waiting,) = stack.as_(later, "GET", "/v1/invitations").json()["items"]
    decline = f"/v1/invitations/{waiting['id']}/decline"
    error(stack.as_(later, "POST", decline), 403, "invitation_token_required")
    token = {"token": answers[1].json()["accept_token"]}
    declined = stack.as_(later, "POST", decline, json=token)
    assert declined.json()["status"] == "declined"
    error(stack.as_(later, "GET", f"/v1/vehicles/{VIN}/registration"), 404, "vehicle_not_found")
    statuses = {
        i["email"]: i["status"]
        for i in stack.as_(owner, "GET", f"/v1/vehicles/{VIN}/invitations").json()["items"]
    }
    assert statuses == {"neighbour@example.com": "accepted", "nobody@example.com": "declined"}

    # probing: after the burst, 429 with Retry-After (two were sent above)
    probes = [
        stack.as_(
            owner,
            "POST",
            f"/v1/vehicles/{VIN}/invitations",
            json={"email": f"probe{n}@example.com", "services": ["read"]},
        )
        for n in range(30)
    ]
    assert [p.status_code for p in probes] == [201] * 8 + [429] * 22
    refused = error(probes[-1], 429, "invitation_rate_limited")
    assert refused["message"]
    assert int(probes[-1].headers["Retry-After"]) >= 1


# --- item 10: what a password change, a reset and a disable end -------------------------------


def key_of(stack: Stack, headers: dict[str, str]) -> tuple[int, str]:
    r = stack.as_(headers, "POST", "/v1/api-keys", json={"name": "integration"})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def logged_in(stack: Stack, email: str) -> tuple[dict[str, str], str]:
    r = stack.api.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD},
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}, r.json()["refresh_token"]


def everything_ended(stack: Stack, access: dict[str, str], refresh: str, key: str) -> None:
    error(stack.as_(access, "GET", "/v1/me"), 401, "invalid_token")
    error(stack.as_({"X-API-Key": key}, "GET", "/v1/me"), 401, "invalid_api_key")
    r = stack.api.post(
        "/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh}
    )
    error(r, 401, "invalid_grant")


def test_a_password_change_a_reset_and_a_disable_end_keys_and_tokens(stack: Stack) -> None:
    """Item 10: API keys survived a password change, a reset and a disable-then-enable, and
    an access token stayed valid after a password change."""
    _, manager = stack.organization("Org", "fleet@org.example")
    stack.user(manager, "dana@org.example", "driver")
    dana = stack.as_(manager, "GET", "/v1/users").json()["items"][-1]["id"]

    # her own password change
    access, refresh = logged_in(stack, "dana@org.example")
    _, key = key_of(stack, access)
    changed = stack.as_(
        access,
        "PATCH",
        f"/v1/users/{dana}",
        json={"password": "dana-new-password-1", "current_password": PASSWORD},
    )
    assert changed.status_code == 200, changed.text
    everything_ended(stack, access, refresh, key)
    # ... a reset by her manager (back to PASSWORD)
    access = stack.login("dana@org.example", "dana-new-password-1")
    refresh = stack.api.post(
        "/v1/auth/token",
        data={
            "grant_type": "password",
            "username": "dana@org.example",
            "password": "dana-new-password-1",
        },
    ).json()["refresh_token"]
    _, key = key_of(stack, access)
    reset = stack.as_(manager, "PATCH", f"/v1/users/{dana}", json={"password": PASSWORD})
    assert reset.status_code == 200, reset.text
    everything_ended(stack, access, refresh, key)
    # ... and a disable, then enable
    access, refresh = logged_in(stack, "dana@org.example")
    _, key = key_of(stack, access)
    for disabled in (True, False):
        r = stack.as_(manager, "PATCH", f"/v1/users/{dana}", json={"disabled": disabled})
        assert r.status_code == 200, r.text
    everything_ended(stack, access, refresh, key)
    # a fresh login works, and renaming (not a credential change) ends nothing
    access, refresh = logged_in(stack, "dana@org.example")
    assert stack.as_(manager, "PATCH", f"/v1/users/{dana}", json={"name": "D"}).status_code == 200
    assert stack.as_(access, "GET", "/v1/me").status_code == 200
    (entry, *_) = stack.as_(
        stack.admin, "GET", "/v1/audit", params={"action": "user_update"}
    ).json()["items"]
    assert entry["detail"] == {"changed": ["name"]}


def test_managers_see_and_revoke_their_users_keys_and_nobody_elses(stack: Stack) -> None:
    """Item 10: owners and fleet managers could neither list nor revoke their users' keys."""
    _, manager = stack.organization("Org", "fleet@org.example")
    driver = stack.user(manager, "dana@org.example", "driver")
    _, other_manager = stack.organization("Other", "fleet@other.example")
    owner = stack.register("olga@example.com")
    son = stack.user(owner, "tim@example.com", "driver")

    dana = stack.login("dana@org.example")
    key_id, key = key_of(stack, dana)
    tim_key_id, _ = key_of(stack, stack.login("tim@example.com"))

    listed = stack.as_(manager, "GET", f"/v1/users/{driver}/api-keys")
    assert listed.status_code == 200, listed.text
    assert [k["id"] for k in listed.json()["items"]] == [key_id]
    assert key not in listed.text
    owners = stack.as_(owner, "GET", f"/v1/users/{son}/api-keys")
    assert [k["id"] for k in owners.json()["items"]] == [tim_key_id]
    # outside their account: as if there were no such user or key
    error(stack.as_(other_manager, "GET", f"/v1/users/{driver}/api-keys"), 404, "user_not_found")
    error(stack.as_(owner, "GET", f"/v1/users/{driver}/api-keys"), 404, "user_not_found")
    error(stack.as_(dana, "GET", f"/v1/users/{son}/api-keys"), 404, "user_not_found")
    error(stack.as_(other_manager, "DELETE", f"/v1/api-keys/{key_id}"), 404, "api_key_not_found")
    error(stack.as_(owner, "DELETE", f"/v1/api-keys/{key_id}"), 404, "api_key_not_found")

    revoked = stack.as_(manager, "DELETE", f"/v1/api-keys/{key_id}")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    error(stack.as_({"X-API-Key": key}, "GET", "/v1/me"), 401, "invalid_api_key")
    assert stack.as_(owner, "DELETE", f"/v1/api-keys/{tim_key_id}").status_code == 200


# --- the low ones ---------------------------------------------------------------------------


@pytest.fixture
def frozen(tmp_path: Path, mosquitto: MosquittoProcess, state_db_url: str) -> Iterator[Stack]:
    """A stack whose clock stands still, so a lockout lasts however slow the machine is."""
    yield from make_stack(tmp_path, mosquitto, state_db_url, clock=lambda: 1_800_000_000.0)


def test_a_lockout_holds_up_the_guessing_address_not_the_owner(frozen: Stack) -> None:
    """Login lockout was per account: five wrong passwords from anywhere locked the owner
    out (429) wherever they were."""
    stack = frozen
    stack.register("olga@example.com")
    attacker = TestClient(stack.api.app, client=("203.0.113.66", 40000))
    olga = TestClient(stack.api.app, client=("198.51.100.7", 40001))

    def login(client: TestClient, password: str) -> Response:
        return client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": "olga@example.com", "password": password},
        )

    for _ in range(5):
        error(login(attacker, "guess-guess-guess"), 401, "invalid_grant")
    error(login(attacker, PASSWORD), 429, "login_locked")  # even the right one, from there
    assert login(olga, PASSWORD).status_code == 200


def test_responses_with_a_secret_are_not_cached(stack: Stack) -> None:
    """RFC 6749 5.1: token responses carry Cache-Control: no-store and Pragma: no-cache;
    they carried neither. So do the other responses that show a secret once."""
    stack.register("olga@example.com")
    token = stack.api.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": "olga@example.com", "password": PASSWORD},
    )
    refreshed = stack.api.post(
        "/v1/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": token.json()["refresh_token"]},
    )
    olga = {"Authorization": f"Bearer {token.json()['access_token']}"}
    secrets = [
        token,
        refreshed,
        stack.as_(olga, "POST", "/v1/api-keys", json={"name": "k"}),
        stack.as_(olga, "POST", "/v1/vehicles", json={"vin": VIN}),
        stack.as_(olga, "POST", f"/v1/vehicles/{VIN}/credentials"),
        stack.as_(
            stack.admin, "POST", "/v1/users", json={"email": "a@b.c", "name": "a", "role": "admin"}
        ),
    ]
    for r in secrets:
        assert r.headers["cache-control"] == "no-store", r.request.url
        assert r.headers["pragma"] == "no-cache", r.request.url


BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "Ann\u202enimda" shows as "Annadmin"


@pytest.mark.parametrize(
    "bad", [f"Ann{BIDI}nimda", "Ann\u2066x\u2069", "line\nforged", "zero\u200bwidth", "\x1b[31m"]
)
def test_names_with_control_or_bidi_characters_are_refused(stack: Stack, bad: str) -> None:
    """Control and bidirectional-formatting characters were accepted in names and labels."""
    owner = stack.register("olga@example.com")
    assert stack.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    me = stack.as_(owner, "GET", "/v1/me").json()["user"]["id"]
    attempts = [
        stack.api.post(
            "/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD, "name": bad}
        ),
        stack.as_(stack.admin, "POST", "/v1/accounts", json={"kind": "private", "name": bad}),
        stack.as_(owner, "PATCH", f"/v1/users/{me}", json={"name": bad}),
        stack.as_(owner, "POST", "/v1/api-keys", json={"name": bad}),
        stack.as_(owner, "POST", "/v1/vehicles", json={"vin": "WABUSE00000000002", "label": bad}),
    ]
    for r in attempts:
        refused = error(r, 422, "invalid_request")
        assert any("U+" in d["msg"] for d in refused["details"]), refused
    # in an e-mail address too (a blank is refused by the address pattern already)
    error(
        stack.api.post(
            "/v1/auth/register",
            json={"email": f"x{bad}@example.com", "password": PASSWORD, "name": "x"},
        ),
        422,
        "invalid_request",
    )
    assert stack.as_(owner, "GET", "/v1/me").json()["user"]["name"] == "Someone"


def test_a_grant_needs_read_to_read_and_an_empty_one_is_refused(stack: Stack) -> None:
    """A grant with services [] gave full history read; reading is now the service 'read',
    listed like any other, and a grant lists at least one service."""
    owner = stack.register("olga@example.com")
    assert stack.as_(owner, "POST", "/v1/vehicles", json={"vin": VIN}).status_code == 201
    son = stack.user(owner, "tim@example.com", "driver")
    writer = open_store(stack.db_path)  # the car has reported once
    try:
        writer.commit(
            IngestBatch(received_at=now_ms(), samples=[Sample(VIN, 1, now_ms(), {SPEED: 0.0})])
        )
    finally:
        writer.close()
    tim = stack.login("tim@example.com")

    error(
        stack.as_(
            owner, "POST", f"/v1/vehicles/{VIN}/grants", json={"user_id": son, "services": []}
        ),
        422,
        "invalid_request",
    )
    lock_only = stack.as_(
        owner, "POST", f"/v1/vehicles/{VIN}/grants", json={"user_id": son, "services": ["lock"]}
    )
    assert lock_only.status_code == 201, lock_only.text
    # he may lock the car and follow his own command, and read nothing else
    mine = stack.as_(tim, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "lock"})
    assert mine.status_code == 201, mine.text
    assert stack.as_(tim, "GET", f"/v1/commands/{mine.json()['id']}").status_code == 200
    for url in (f"/v1/vehicles/{VIN}", f"/v1/vehicles/{VIN}/commands"):
        error(stack.as_(tim, "GET", url), 403, "forbidden")
    error(
        stack.as_(tim, "GET", f"/v1/vehicles/{VIN}/history", params={"signals": SPEED}),
        403,
        "forbidden",
    )
    assert stack.as_(tim, "GET", "/v1/vehicles").json()["items"] == []
    theirs = stack.as_(owner, "POST", f"/v1/vehicles/{VIN}/commands", json={"type": "locate"})
    error(stack.as_(tim, "GET", f"/v1/commands/{theirs.json()['id']}"), 404, "command_not_found")
    # with 'read' he sees it
    stack.as_(
        owner,
        "POST",
        f"/v1/vehicles/{VIN}/grants",
        json={"user_id": son, "services": ["read", "lock"]},
    )
    assert stack.as_(tim, "GET", f"/v1/vehicles/{VIN}").status_code == 200
    assert [v["vin"] for v in stack.as_(tim, "GET", "/v1/vehicles").json()["items"]] == [VIN]


def test_a_failed_login_is_audited_with_a_bounded_escaped_username(stack: Stack) -> None:
    """The failed-login entry stored whatever was typed as the username, verbatim."""
    typed = "evil\u202e\n" + "x" * 300 + "@example.com"
    r = stack.api.post(
        "/v1/auth/token", data={"grant_type": "password", "username": typed, "password": "p"}
    )
    error(r, 401, "invalid_grant")
    (entry,) = stack.as_(stack.admin, "GET", "/v1/audit", params={"action": "login"}).json()[
        "items"
    ][:1]
    email = entry["detail"]["email"]
    assert email.startswith("evil\\u202e\\u000a")
    assert len(email) < 160
    assert email.isprintable()
    assert TEST_ADMIN_EMAIL not in email
