"""``telematics account|user|vehicle``: the operator's commands on the state database, run
as the installed command would be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from device_sim.credentials import load_credentials
from gateway.auth.passwords import verify_password
from gateway.broker.auth import verify_password as verify_mqtt_password
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import StateDatabase

VINS = ["WCLXX000000000001", "WCLXX000000000002"]


def telematics(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_operator_sets_up_an_organization_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = telematics(data, "account", "add", "Vans GmbH", "--kind", "organization")
    assert r.returncode == 0, r.stderr
    assert "created organization account 1" in r.stdout

    r = telematics(
        data,
        "user",
        "add",
        "mia@vans.example",
        "--role",
        "fleet_manager",
        "--account",
        "1",
        env={"TELEMATICS_USER_PASSWORD": "chosen-password-1"},
    )
    assert r.returncode == 0, r.stderr
    assert "chosen-password-1" not in r.stdout + r.stderr
    generated = telematics(data, "user", "add", "root@example.com", "--role", "admin")
    assert generated.returncode == 0, generated.stderr
    assert "password (shown only now)" in generated.stdout

    credentials = tmp_path / "units.json"
    r = telematics(
        data,
        "vehicle",
        "add",
        *VINS,
        "--account",
        "1",
        "--label",
        "van",
        "--credentials-file",
        str(credentials),
        "--broker-url",
        "mqtt://127.0.0.1:1884",
    )
    assert r.returncode == 0, r.stderr
    assert credentials.stat().st_mode & 0o077 == 0
    units = load_credentials(credentials)
    assert sorted(units.vehicles) == VINS
    assert units.broker_url == "mqtt://127.0.0.1:1884"
    for entry in units.vehicles.values():
        assert entry.mqtt_password is not None
        assert entry.mqtt_password not in r.stdout + r.stderr

    listed = telematics(data, "vehicle", "list", "--json")
    assert [v["vin"] for v in json.loads(listed.stdout)] == VINS
    assert telematics(data, "vehicle", "revoke", VINS[1]).returncode == 0
    listed = json.loads(telematics(data, "vehicle", "list", "--all", "--json").stdout)
    assert [(v["vin"], v["revoked"]) for v in listed] == [(VINS[0], False), (VINS[1], True)]

    with StateDatabase(f"sqlite:///{data / 'state.db'}") as db:
        accounts = AccountRepository(db)
        user = accounts.get_user_by_email("mia@vans.example")
        assert user is not None
        assert user.role == "fleet_manager"
        assert verify_password(user.password_hash, "chosen-password-1")
        (identity,) = accounts.broker_identities()
        assert identity[0] == VINS[0]
        password = units.vehicles[VINS[0]].mqtt_password
        assert password is not None
        assert identity[1] is not None
        assert verify_mqtt_password(password, identity[1])
        entries = AuditLog(db).query(limit=100)
    actions = [(e.action, e.target) for e in reversed(entries)]
    assert actions == [
        ("account_create", "account:1"),
        ("user_create", "user:1"),
        ("user_create", "user:2"),
        ("vehicle_provision", f"vehicle:{VINS[0]}"),
        ("vehicle_provision", f"vehicle:{VINS[1]}"),
        ("vehicle_revoke", f"vehicle:{VINS[1]}"),
    ]
    assert all(e.actor.startswith("cli:") for e in entries)


def test_mistakes_are_explained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    r = telematics(data, "vehicle", "add", VINS[0], "--account", "7")
    assert r.returncode == 2
    assert "there is no account 7; telematics account list shows them" in r.stderr
    r = telematics(data, "vehicle", "add", "not-a-vin", "--account", "1")
    assert r.returncode == 2
    assert "expected 17 characters" in r.stderr
    r = telematics(data, "user", "add", "a@example.com", "--role", "owner")
    assert r.returncode == 2
    assert "give --account" in r.stderr
    r = telematics(
        data,
        "user",
        "add",
        "root@example.com",
        "--role",
        "admin",
        env={"TELEMATICS_USER_PASSWORD": "short"},
    )
    assert r.returncode == 2
    assert "at least 10 characters" in r.stderr
