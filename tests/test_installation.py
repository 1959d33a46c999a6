"""The demo's unit credentials follow the state database (gateway.installation.provision_demo).

Issue 10, item 5: a fleet manager rotated a demo vehicle's credentials through the API, the
simulator was refused, and every restart repeated it because the demo start did not notice
that the credentials file no longer matched. These tests run the refresh against a real
state database (SQLite and PostgreSQL) and check the file against the stored hashes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sim.credentials import load_credentials
from gateway.accounts.provisioning import provision_vehicle, rotate_vehicle_password
from gateway.broker.auth import verify_mqtt_password
from gateway.core.policy import AccountKind
from gateway.installation import provision_demo
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import StateDatabase

VINS = ("WSMZZZ00000000001", "WSMZZZ00000000002")
NOW = 1_800_000_000_000


@pytest.fixture
def repos(state_db_url: str) -> Iterator[tuple[AccountRepository, AuditLog]]:
    db = StateDatabase(state_db_url)
    db.upgrade()
    try:
        yield AccountRepository(db), AuditLog(db)
    finally:
        db.dispose()


def _demo(repos: tuple[AccountRepository, AuditLog], path: Path) -> int:
    accounts, audit = repos
    login = provision_demo(
        accounts,
        audit,
        vins=VINS,
        credentials_path=path,
        broker_url="mqtt://127.0.0.1:1884",
        public_key_path=path.with_name("missing.pub"),
        now=NOW,
    )
    return login.account_id


def _matches(accounts: AccountRepository, path: Path, vin: str) -> bool:
    entry = load_credentials(path).vehicles[vin]
    vehicle = accounts.get_vehicle(vin)
    assert vehicle is not None
    assert vehicle.mqtt_password_hash is not None
    assert entry.mqtt_password is not None
    return verify_mqtt_password(
        password=entry.mqtt_password, password_hash=vehicle.mqtt_password_hash
    )


def test_a_rotated_demo_credential_is_refreshed_at_the_next_start(
    repos: tuple[AccountRepository, AuditLog], tmp_path: Path
) -> None:
    accounts, audit = repos
    path = tmp_path / "demo-units.json"
    _demo(repos, path)
    assert all(_matches(accounts, path, vin) for vin in VINS)
    first = path.read_bytes()
    _demo(repos, path)  # nothing stale: nothing changes
    assert path.read_bytes() == first

    assert rotate_vehicle_password(accounts, VINS[0]) is not None  # what the API does
    assert not _matches(accounts, path, VINS[0])
    _demo(repos, path)
    assert _matches(accounts, path, VINS[0])
    assert _matches(accounts, path, VINS[1])
    rotations = audit.query(action="vehicle_credentials_rotate")
    assert [e.target for e in rotations] == [f"vehicle:{VINS[0]}"]
    assert rotations[0].detail == {"credentials": "password", "demo": True}


def test_a_revoked_demo_vehicle_is_provisioned_again(
    repos: tuple[AccountRepository, AuditLog], tmp_path: Path
) -> None:
    accounts, _ = repos
    path = tmp_path / "demo-units.json"
    _demo(repos, path)
    accounts.revoke_vehicle(VINS[1], now=NOW + 1)
    _demo(repos, path)
    vehicle = accounts.get_vehicle(VINS[1])
    assert vehicle is not None
    assert vehicle.active
    assert _matches(accounts, path, VINS[1])


def test_a_demo_vin_held_by_another_account_is_left_alone(
    repos: tuple[AccountRepository, AuditLog],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accounts, _ = repos
    other = accounts.create_account(AccountKind.ORGANIZATION, "Someone else", now=NOW)
    taken = provision_vehicle(
        accounts, vin=VINS[1], account_id=other.id, label=None, provisioned_by=None, now=NOW
    )
    path = tmp_path / "demo-units.json"
    with caplog.at_level(logging.WARNING, logger="gateway.installation"):
        _demo(repos, path)
    vehicle = accounts.get_vehicle(VINS[1])
    assert vehicle is not None
    assert vehicle.account_id == other.id
    assert vehicle.mqtt_password_hash == taken.vehicle.mqtt_password_hash  # not rotated
    assert VINS[1] not in load_credentials(path).vehicles
    assert f"demo vehicle {VINS[1]} belongs to account {other.id}" in caplog.text
