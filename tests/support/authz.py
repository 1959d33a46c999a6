"""The authorization world: one gateway with a user of each persona and their vehicles,
shared by the authorization and API schema tests (each holds it in a module-scoped fixture)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from httpx2 import Response

from gateway.api import ApiSettings
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.commands.service import CommandSettings
from gateway.settings import MqttSettings
from gateway.store import IngestBatch, open_store
from schemas import Sample
from tests.support.api import TEST_ADMIN_EMAIL, admin_client
from tests.support.waiting import wait_until

DRIVER_SERVICES = ["read", "lock", "locate"]
PASSWORD = "persona-password-1"
SPEED = "Vehicle.Speed"
#: a receiver that does not exist (.invalid never resolves): deliveries fail, harmlessly
WEBHOOK_URL = "https://hooks.example.invalid/telematics"


_vins = (f"WAUTHZ{n:011d}" for n in itertools.count(1))


def fresh_vin() -> str:
    return next(_vins)


@dataclass
class World:
    client: TestClient
    headers: dict[str, dict[str, str]]
    accounts: dict[str, int]
    users: dict[str, int]
    #: persona -> (own vehicle, foreign vehicle)
    vehicles: dict[str, tuple[str, str]]
    db_path: Path

    def as_(self, persona: str | None) -> dict[str, str]:
        return {} if persona is None else self.headers[persona]

    def admin(self, method: str, url: str, **kw: Any) -> Response:
        r = self.client.request(method, url, headers=self.headers["admin"], **kw)
        assert r.status_code < 300, r.text
        return r

    def own_account(self, persona: str) -> int:
        return {
            "admin": self.accounts["A"],
            "fleet_manager": self.accounts["A"],
            "fleet_viewer": self.accounts["A"],
            "owner": self.accounts["P"],
            "driver": self.accounts["P"],
        }[persona]

    def account(self, persona: str, own: bool) -> int:
        return self.own_account(persona) if own else self.accounts["B"]

    def vehicle(self, persona: str, own: bool) -> str:
        return self.vehicles[persona][0 if own else 1]

    def report(self, vin: str) -> None:
        """Make ``vin`` known to the telemetry store, as if it had sent a sample."""
        store = open_store(self.db_path)
        try:
            store.commit(IngestBatch(received_at=1, samples=[Sample(vin, 1, 1, {SPEED: 1.0})]))
        finally:
            store.close()

    def disposable_vehicle(self, persona: str, own: bool) -> str:
        """A new vehicle the persona owns (``own``; for the driver: one granted to them)
        or one of organization B."""
        vin = fresh_vin()
        self.admin(
            "POST", "/v1/vehicles", json={"vin": vin, "account_id": self.account(persona, own)}
        )
        if own and persona == "driver":
            self.admin(
                "POST",
                f"/v1/vehicles/{vin}/grants",
                json={"user_id": self.users["driver"], "services": DRIVER_SERVICES},
            )
        self.report(vin)
        return vin

    def command(self, vin: str) -> str:
        """A queued command (the vehicle never connects, so it waits) for ``vin``."""
        r = self.admin("POST", f"/v1/vehicles/{vin}/commands", json={"type": "lock"})
        command_id: str = r.json()["id"]
        return command_id

    def job(self, persona: str, own: bool) -> int:
        """A running command job to the persona's own vehicle (made by the persona when
        they may send commands, else by the admin) or to organization B's."""
        maker = persona if own and persona in ("fleet_manager", "owner", "driver") else "admin"
        r = self.client.post(
            "/v1/command-jobs",
            json={"type": "lock", "vins": [self.vehicle(persona, own)]},
            headers=self.headers[maker],
        )
        assert r.status_code == 201, r.text
        job_id: int = r.json()["id"]
        return job_id

    def webhook(self, persona: str, own: bool) -> int:
        """A webhook of the persona's account (or organization B's), made by the admin."""
        r = self.admin(
            "POST",
            "/v1/webhooks",
            json={"url": WEBHOOK_URL, "account_id": self.account(persona, own)},
        )
        webhook_id: int = r.json()["id"]
        return webhook_id

    def integration(self, persona: str, own: bool) -> int:
        """An MQTT integration credential of the persona's account (or organization B's),
        made by the admin."""
        r = self.admin("POST", "/v1/integrations", json={"account_id": self.account(persona, own)})
        assert r.status_code == 201, r.text
        credential_id: int = r.json()["id"]
        return credential_id

    def member_of(self, persona: str, own: bool) -> int:
        """A user of the account of the persona's own (or the foreign) vehicle other than
        the persona: whom a vehicle of that account may be granted to directly."""
        account = self.account(persona, own)
        if account == self.accounts["P"]:
            return self.users["driver"]
        if account == self.accounts["A"]:
            return self.users["fleet_viewer"]
        return self.users["fleet_manager_b"]

    def invitation(self, vin: str, email: str) -> int:
        """A pending invitation of ``vin`` to ``email``, made by the admin."""
        r = self.admin(
            "POST", f"/v1/vehicles/{vin}/invitations", json={"email": email, "services": ["read"]}
        )
        invitation_id: int = r.json()["id"]
        return invitation_id

    def invitation_to(self, persona: str, own: bool) -> int:
        """An invitation to the persona (``own``) or to someone else, of a vehicle of
        organization B."""
        vin = self.disposable_vehicle("fleet_manager", False)
        email = f"{persona}@example.com" if persona != "admin" else TEST_ADMIN_EMAIL
        return self.invitation(vin, email if own else "someone-else@example.com")

    def user_in(self, persona: str, own: bool) -> int:
        """A user of the persona's account other than themselves (for an owner: a driver,
        the only kind of user an owner manages), or of organization B."""
        email = f"u{fresh_vin().lower()}@example.com"
        role = "driver" if (own and persona in ("owner", "driver")) else "fleet_viewer"
        r = self.admin(
            "POST",
            "/v1/users",
            json={
                "email": email,
                "name": "x",
                "role": role,
                "account_id": self.account(persona, own),
                "password": PASSWORD,
            },
        )
        user_id: int = r.json()["id"]
        return user_id


@contextmanager
def open_world(tmp: Path) -> Iterator[World]:
    """The world in directory ``tmp``: its broker, state database and API; torn down at the
    end (the test modules hold it in a module-scoped fixture)."""
    broker = MosquittoProcess(BrokerConfig(port=free_port(), data_dir=tmp / "broker"))
    broker.start()
    db_path = tmp / "telemetry.db"
    commands = CommandSettings(
        state_db_url=f"sqlite:///{tmp / 'state.db'}",
        mqtt=MqttSettings(host=broker.host, port=broker.port),
    )
    try:
        with admin_client(
            ApiSettings(db_path=db_path, commands=commands, max_running_jobs=100_000)
        ) as client:
            service = client.app.state.commands  # type: ignore[attr-defined]
            wait_until(service.connected.is_set, what="the command service to connect")
            yield _build(client, db_path)
    finally:
        broker.stop()


def _build(client: TestClient, db_path: Path) -> World:
    admin = {"Authorization": client.headers["Authorization"]}
    client.headers.pop("Authorization")
    world = World(client, {"admin": admin}, {}, {}, {}, db_path)
    for name, kind in [("A", "organization"), ("B", "organization"), ("P", "private")]:
        r = world.admin("POST", "/v1/accounts", json={"kind": kind, "name": f"account {name}"})
        world.accounts[name] = r.json()["id"]
    people = [
        ("fleet_manager", "A"),
        ("fleet_viewer", "A"),
        ("owner", "P"),
        ("driver", "P"),
        ("fleet_manager_b", "B"),
    ]
    for persona, account in people:
        r = world.admin(
            "POST",
            "/v1/users",
            json={
                "email": f"{persona}@example.com",
                "name": persona,
                "role": persona.removesuffix("_b"),
                "account_id": world.accounts[account],
                "password": PASSWORD,
            },
        )
        world.users[persona] = r.json()["id"]
        token = client.post(
            "/v1/auth/token",
            data={
                "grant_type": "password",
                "username": f"{persona}@example.com",
                "password": PASSWORD,
            },
        )
        assert token.status_code == 200, token.text
        world.headers[persona] = {"Authorization": f"Bearer {token.json()['access_token']}"}
    vin_a, vin_b, vin_p = fresh_vin(), fresh_vin(), fresh_vin()
    for vin, account in [(vin_a, "A"), (vin_b, "B"), (vin_p, "P")]:
        world.admin(
            "POST", "/v1/vehicles", json={"vin": vin, "account_id": world.accounts[account]}
        )
        world.report(vin)
    world.admin(
        "POST",
        f"/v1/vehicles/{vin_p}/grants",
        json={"user_id": world.users["driver"], "services": DRIVER_SERVICES},
    )
    world.vehicles = {
        "admin": (vin_a, vin_b),
        "fleet_manager": (vin_a, vin_b),
        "fleet_viewer": (vin_a, vin_b),
        "owner": (vin_p, vin_b),
        "driver": (vin_p, vin_b),
    }
    return world
