"""``telematics account|user|vehicle``: the operator's commands on the state database.

They run in this process, through the command's own entry point (``gateway.cli.main``,
what the installed ``telematics`` calls), with their own environment, output and exit
status; one test runs the installed command in a process of its own as well. The password
reset is checked through the API: the sessions it ends are refused there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from device_sim.credentials import load_credentials
from gateway.api import ApiSettings, create_app
from gateway.auth.passwords import verify_password
from gateway.broker.auth import verify_mqtt_password
from gateway.cli import main
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import StateDatabase
from tests.support.api import auth_settings_for_tests

VINS = ["WCLXX000000000001", "WCLXX000000000002"]


@dataclass
class Done:
    """What a command run left: its exit status and output (as a process would have)."""

    returncode: int
    stdout: str
    stderr: str


def telematics(data: Path, *args: str, env: dict[str, str] | None = None) -> Done:
    """``telematics ARGS --data-dir DATA`` with ``env`` added to a clean environment (no
    ``TELEMATICS_*`` from outside)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(
        {k: v for k, v in saved.items() if not k.startswith("TELEMATICS_")} | (env or {})
    )
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([*args, "--data-dir", str(data)])
            except SystemExit as exc:  # argparse: usage errors and --help
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Done(code, out.getvalue(), err.getvalue())


def test_the_installed_command_runs_them(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "account", "add", "Vans GmbH"],
        capture_output=True,
        text=True,
        env={**os.environ, "TELEMATICS_DATA_DIR": str(tmp_path / "data")},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "created organization account 1 'Vans GmbH'" in done.stdout


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
        assert verify_password(password="chosen-password-1", password_hash=user.password_hash)
        (identity,) = accounts.broker_identities()
        assert identity[0] == VINS[0]
        password = units.vehicles[VINS[0]].mqtt_password
        assert password is not None
        assert identity[1] is not None
        assert verify_mqtt_password(password=password, password_hash=identity[1])
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


def test_a_directory_without_an_installation_is_named(tmp_path: Path) -> None:
    """An operator command typed in the wrong directory (the installation's ``./data`` is
    elsewhere) says so, instead of showing an empty installation it has just created; one
    that creates (``add``) creates it and says so."""
    data = tmp_path / "data"
    for command in (
        ("vehicle", "list"),
        ("user", "list"),
        ("account", "list"),
        ("vehicle", "revoke", VINS[0]),
        ("user", "set-password", "a@example.com"),
    ):
        r = telematics(data, *command)
        assert r.returncode == 2, (command, r)
        assert f"there is no installation in {data} (no state.db there)" in r.stderr, command
        assert "--data-dir" in r.stderr
        assert not data.exists(), command
    r = telematics(data, "account", "add", "Vans")
    assert r.returncode == 0, r.stderr
    assert f"note: {data} held no installation; created a new state database" in r.stderr
    r = telematics(data, "account", "list")
    assert (r.returncode, r.stderr) == (0, "")
    assert "Vans" in r.stdout


def test_a_credentials_file_never_moves_a_vehicle_and_says_it_renewed_one(
    tmp_path: Path,
) -> None:
    """``vehicle add VIN --credentials-file`` gives a vehicle provisioned before new
    credentials (the tool hands them out again), and says that its old password no longer
    works; a vehicle another account holds is refused: it used to be "provisioned", stay
    in its account and lose its unit's password."""
    data, path = tmp_path / "data", tmp_path / "units.json"
    assert telematics(data, "account", "add", "Vans").returncode == 0
    assert telematics(data, "account", "add", "Cars").returncode == 0

    def add(account: str, *vins: str) -> Done:
        file = ("--credentials-file", str(path), "--broker-url", "mqtt://h:1884")
        return telematics(data, "vehicle", "add", *vins, "--account", account, *file)

    r = add("Vans", VINS[0])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("provisioned 1 vehicle(s); credentials in")
    first = load_credentials(path).vehicles[VINS[0]].mqtt_password
    r = add("Cars", VINS[0])
    assert r.returncode == 2
    assert f"{VINS[0]} is provisioned in account 1, not Cars; revoke it first" in r.stderr
    assert load_credentials(path).vehicles[VINS[0]].mqtt_password == first
    listed = json.loads(telematics(data, "vehicle", "list", "--json").stdout)
    assert [(v["vin"], v["account"]) for v in listed] == [(VINS[0], 1)]
    r = add("Vans", VINS[0], VINS[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "provisioned 2 vehicle(s) (1 of them provisioned before: new passwords, their old "
        "ones no longer work); credentials in"
    )
    assert load_credentials(path).vehicles[VINS[0]].mqtt_password != first


def test_every_action_prints_json_with_json(tmp_path: Path) -> None:
    """``--json`` ("print JSON instead of text", every action's help says) was ignored by
    ``account add``, ``user add``, ``user set-password`` and ``vehicle revoke``."""
    data = tmp_path / "data"

    def as_json(*command: str, env: dict[str, str] | None = None) -> Any:
        r = telematics(data, *command, "--json", env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert as_json("account", "add", "Vans") == {"id": 1, "kind": "organization", "name": "Vans"}
    chosen = {"TELEMATICS_USER_PASSWORD": "chosen-password-1"}
    created = as_json("user", "add", "a@vans.example", "--role", "fleet_manager",
                      "--account", "Vans", env=chosen)  # fmt: skip
    assert created == {"id": 1, "email": "a@vans.example", "role": "fleet_manager",
                       "account": 1, "password": None}  # fmt: skip
    generated = as_json("user", "set-password", "a@vans.example")
    assert generated["password"]
    assert generated["sessions_ended"] == 0
    assert generated["disabled"] is False
    assert as_json("vehicle", "add", VINS[0], "--account", "1")[0]["vin"] == VINS[0]
    assert as_json("vehicle", "revoke", VINS[0]) == [{"vin": VINS[0], "revoked": True}]


def test_a_reader_that_goes_away_ends_a_command_quietly(tmp_path: Path) -> None:
    """``telematics vehicle list --json | head -1`` ended with a BrokenPipeError traceback."""
    env = {**os.environ, "TELEMATICS_DATA_DIR": str(tmp_path / "data")}
    assert telematics(tmp_path / "data", "account", "add", "Vans").returncode == 0
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the command writes
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "account", "list", "--json"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            check=False,
        )
    finally:
        os.close(writer)
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 1


def test_accounts_are_named_by_id_or_name(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert telematics(data, "account", "add", "Demo Fleet").returncode == 0
    r = telematics(data, "vehicle", "add", VINS[0], "--account", "Demo Fleet")
    assert r.returncode == 0, r.stderr
    r = telematics(data, "vehicle", "list", "--account", "Demo Fleet", "--json")
    assert [(v["vin"], v["account"]) for v in json.loads(r.stdout)] == [(VINS[0], 1)]
    r = telematics(data, "vehicle", "add", VINS[1], "--account", "No Such Fleet")
    assert r.returncode == 2
    assert "there is no account named 'No Such Fleet'" in r.stderr
    assert telematics(data, "account", "add", "Demo Fleet").returncode == 0
    r = telematics(data, "vehicle", "add", VINS[1], "--account", "Demo Fleet")
    assert r.returncode == 2
    assert "2 accounts are named 'Demo Fleet' (ids 1, 2): give the id" in r.stderr
    r = telematics(data, "user", "add", "x@example.com", "--role", "driver", "--account", "1")
    assert r.returncode == 0, r.stderr


def test_a_credentials_file_says_where_the_broker_is(tmp_path: Path) -> None:
    """Without --broker-url the file gets the broker of the installation in the data
    directory (the simulator refuses a file without one rather than guess)."""
    data = tmp_path / "data"
    assert telematics(data, "account", "add", "Vans").returncode == 0
    path = tmp_path / "units.json"

    def add(vin: str, *extra: str, env: dict[str, str] | None = None) -> str | None:
        r = telematics(data, "vehicle", "add", vin, "--account", "1", "--credentials-file",
                       str(path), *extra, env=env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        url = load_credentials(path).broker_url
        assert f"(broker {url})" in r.stdout
        return url

    assert add(VINS[0]) == "mqtt://127.0.0.1:1884"  # telematics up's default
    path.unlink()
    broker_dir = data / "broker"
    broker_dir.mkdir()
    (broker_dir / "mosquitto.conf").write_text(
        "per_listener_settings false\n\nlistener 23456 127.0.0.1\n"
    )
    assert add(VINS[0]) == "mqtt://127.0.0.1:23456"  # the broker up renders for this data dir
    assert (
        add(VINS[1], "--broker-url", "mqtt://broker.example:1883") == "mqtt://broker.example:1883"
    )
    assert add(VINS[1]) == "mqtt://broker.example:1883"  # the file's own URL stays
    path.unlink()
    env = {"TELEMATICS_UNIT_BROKER_URL": "mqtt://units.example:1884"}
    assert add(VINS[1], env=env) == "mqtt://units.example:1884"
    # certificate units cannot log in on the plain listener: the file names the TLS one
    path.unlink()
    (broker_dir / "mosquitto.conf").write_text(
        "listener 23456 127.0.0.1\n\nlistener 23457 127.0.0.1\nrequire_certificate true\n"
    )
    assert add("WCLXX000000000003", "--certificate") == "mqtts://127.0.0.1:23457"
    path.unlink()
    env = {"TELEMATICS_UNIT_TLS_BROKER_URL": "mqtts://tls.example:8883"}
    assert add("WCLXX000000000004", "--certificate", env=env) == "mqtts://tls.example:8883"


@dataclass
class Api:
    client: TestClient

    def login(self, email: str, password: str) -> int:
        form = {"grant_type": "password", "username": email, "password": password}
        return self.client.post("/v1/auth/token", data=form).status_code

    def refresh_token(self, email: str, password: str) -> str:
        form = {"grant_type": "password", "username": email, "password": password}
        r = self.client.post("/v1/auth/token", data=form)
        assert r.status_code == 200, r.text
        token: str = r.json()["refresh_token"]
        return token

    def refresh(self, token: str) -> int:
        form = {"grant_type": "refresh_token", "refresh_token": token}
        return self.client.post("/v1/auth/token", data=form).status_code


def test_with_edge_brokers_a_credentials_file_names_its_vins_edge(tmp_path: Path) -> None:
    """Each VIN logs in at one edge only (decision 0038): the file gets that edge's URL, VINs
    of two edges in one file are refused before anything is provisioned, and so is adding
    VINs of another edge to a file."""
    from schemas.edges import edge_index

    data = tmp_path / "data"
    assert telematics(data, "account", "add", "Vans").returncode == 0
    for i in (1, 2):
        (data / f"broker-edge-{i}").mkdir()
        (data / f"broker-edge-{i}" / "mosquitto.conf").write_text(
            f"listener {30000 + i} 127.0.0.1\n"
        )
    by_edge: dict[int, list[str]] = {1: [], 2: []}
    for n in range(1, 40):
        vin = f"WEDGE{n:012d}"
        by_edge[edge_index(vin, 2)].append(vin)
    path = tmp_path / "units.json"
    argv = ["--account", "1", "--credentials-file", str(path)]
    r = telematics(data, "vehicle", "add", by_edge[1][0], by_edge[2][2], *argv)
    assert r.returncode == 2
    assert "2 different edge brokers" in r.stderr
    assert not path.exists()
    r = telematics(data, "vehicle", "add", *by_edge[2][:2], *argv)
    assert r.returncode == 0, r.stderr
    assert load_credentials(path).broker_url == "mqtt://127.0.0.1:30002"
    r = telematics(data, "vehicle", "add", by_edge[1][0], *argv)
    assert r.returncode == 2
    assert "use a credentials file per edge" in r.stderr
    # nothing of the refused adds was provisioned: those VINs can be added now
    r = telematics(data, "vehicle", "add", by_edge[1][0], by_edge[2][2], "--account", "1")
    assert r.returncode == 0, r.stderr


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The API on the state database the commands use (DATA/state.db)."""
    data = tmp_path / "data"
    data.mkdir()
    settings = ApiSettings(
        db_path=data / "telemetry.db",
        state_db_url=f"sqlite:///{data / 'state.db'}",
        auth=auth_settings_for_tests(),
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client)


def test_set_password_resets_a_lost_password_and_ends_the_sessions(
    api: Api, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    email, old = "root@example.com", "the-old-password-1"
    r = telematics(data, "user", "add", email, "--role", "admin",
                   env={"TELEMATICS_USER_PASSWORD": old})  # fmt: skip
    assert r.returncode == 0, r.stderr
    sessions = [api.refresh_token(email, old) for _ in range(2)]
    with StateDatabase(f"sqlite:///{data / 'state.db'}") as db:
        # locked out after wrong passwords, for a quarter of an hour (as the API would do
        # after many; set here so that no clock runs out during the test)
        accounts = AccountRepository(db)
        user = accounts.get_user_by_email(email)
        assert user is not None
        accounts.record_login_failure(
            user.id,
            "testclient",  # the test client's address
            now=int(time.time() * 1000),
            lockout_ms=lambda failures: 900_000,
        )
    assert api.login(email, old) == 429

    new = "the-new-password-1"
    r = telematics(data, "user", "set-password", email, env={"TELEMATICS_USER_PASSWORD": new})
    assert r.returncode == 0, r.stderr
    assert "2 session(s) ended" in r.stdout
    assert new not in r.stdout + r.stderr
    assert [api.refresh(token) for token in sessions] == [401, 401]
    assert api.login(email, new) == 200  # no lock-out left
    assert api.login(email, old) == 401

    r = telematics(data, "user", "set-password", email)  # generated, shown once
    assert r.returncode == 0, r.stderr
    generated = r.stdout.split("password (shown only now): ")[1].strip()
    assert api.login(email, generated) == 200
    assert api.login(email, new) == 401

    with StateDatabase(f"sqlite:///{data / 'state.db'}") as db:
        user = AccountRepository(db).get_user_by_email(email)
        assert user is not None
        entries = [e for e in AuditLog(db).query(limit=100) if e.action == "user_update"]
    assert len(entries) == 2
    assert all(e.target == f"user:{user.id}" and e.actor.startswith("cli:") for e in entries)
    assert all(e.detail is not None and e.detail["changed"] == ["password"] for e in entries)
    assert all(new not in json.dumps(e.detail) for e in entries)


def test_set_password_mistakes_are_explained(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert telematics(data, "user", "add", "a@example.com", "--role", "admin").returncode == 0
    r = telematics(data, "user", "set-password", "nobody@example.com")
    assert r.returncode == 2
    assert "there is no user nobody@example.com" in r.stderr
    r = telematics(data, "user", "set-password", "a@example.com",
                   env={"TELEMATICS_USER_PASSWORD": "short"})  # fmt: skip
    assert r.returncode == 2
    assert "at least 10 characters" in r.stderr


def test_adding_many_vehicles_says_how_far_it_got(tmp_path: Path) -> None:
    """``telematics vehicle add $(telematics sim --vehicles 1000 ... --list-vins)``, the
    README's simulator example, took 20 s on the development machine with nothing on the
    terminal until its last line. From 100 vehicles on it says what it is doing and how far
    it got, on stderr (stdout keeps its one line, or the JSON)."""
    data = tmp_path / "data"
    assert telematics(data, "account", "add", "Vans GmbH").returncode == 0
    vins = [f"WCLXY{n:012d}" for n in range(1, 261)]
    done = telematics(data, "vehicle", "add", *vins, "--account", "Vans GmbH", "--certificate")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["provisioning 260 vehicles ...", "  250/260"]
    few = telematics(data, "vehicle", "add", *VINS, "--account", "Vans GmbH", "--certificate")
    assert few.returncode == 0, few.stderr
    assert few.stderr == ""
