"""Shared pytest fixtures, one section per subsystem.

Fixtures here are function-scoped and independent of each other: every test gets its own
resources (ports, directories, processes) and nothing leaks between tests, so tests can run
in any order or alone.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from gateway.api import ApiSettings, create_app
from gateway.api.security import AuthSettings
from gateway.auth.tokens import issue_access_token
from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from gateway.broker import auth as broker_auth

# --- broker ---------------------------------------------------------------------------------
# A real Mosquitto (never the shared one on 1883): each test that asks for ``mosquitto`` gets
# its own broker on a free port, with its config, log and persistence file in tmp_path.


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free when the test started."""
    return free_port()


@pytest.fixture
def mosquitto(tmp_path: Path, free_tcp_port: int) -> Iterator[MosquittoProcess]:
    """A started private broker (``.url``, ``.host``, ``.port``); stopped after the test.

    Fails with the install hint if Mosquitto is not installed: a broker test that silently
    skipped would hide a missing CI dependency.
    """
    broker = MosquittoProcess(
        BrokerConfig(
            port=free_tcp_port,
            data_dir=tmp_path / "mosquitto",
            # tests learn that a client has subscribed from the broker's log
            extra_lines=("log_type subscribe",),
        )
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class ClosedBroker:
    """A private broker that refuses anonymous clients: a service account with every
    right, and vehicles (user name = VIN) limited by the ACL to their own topics."""

    broker: MosquittoProcess
    files: broker_auth.BrokerAuthFiles
    service: tuple[str, str]
    vehicles: dict[str, str]

    def add_vehicle(self, vin: str) -> str:
        """Give ``vin`` a password on the running broker (reloaded); returns the password."""
        password = broker_auth.generate_password()
        self.vehicles[vin] = password
        self._write()
        return password

    def remove_vehicle(self, vin: str) -> None:
        self.vehicles.pop(vin)
        self._write()

    def _write(self) -> None:
        vehicles = [
            broker_auth.VehicleIdentity(vin, broker_auth.hash_password(pw))
            for vin, pw in self.vehicles.items()
        ]
        user, password = self.service
        services = [broker_auth.ServiceIdentity(user, broker_auth.hash_password(password))]
        if self.files.write(vehicles, services):
            self.broker.reload()


@pytest.fixture
def closed_broker(tmp_path: Path, free_tcp_port: int) -> Iterator[ClosedBroker]:
    files = broker_auth.BrokerAuthFiles(tmp_path / "broker-auth")
    files.ensure()
    broker = MosquittoProcess(
        BrokerConfig(
            port=free_tcp_port,
            data_dir=tmp_path / "mosquitto",
            allow_anonymous=False,
            password_file=files.password_file,
            acl_file=files.acl_file,
            extra_lines=("log_type subscribe",),
        )
    )
    broker.start()
    closed = ClosedBroker(broker, files, ("telematics-gateway", "service-password-1"), {})
    closed._write()
    try:
        yield closed
    finally:
        broker.stop()


# --- gateway --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], *, timeout: float = 20.0, what: str = "") -> None:
    """Poll ``condition`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


class GatewayProcess:
    """``telematics gateway`` as a real child process, as deployed."""

    def __init__(
        self,
        broker: MosquittoProcess,
        data_dir: Path,
        client_id: str,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.broker = broker
        self.data_dir = data_dir
        self.client_id = client_id
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "telemetry.db"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "gateway",
                "--mqtt-url",
                self.broker.url,
                "--data-dir",
                str(self.data_dir),
                "--client-id",
                self.client_id,
                "--log-level",
                "WARNING",
                *self.extra_args,
            ],
        )
        # ready once its session is subscribed: the broker counts the subscription
        wait_until(self._subscribed, what=f"gateway {self.client_id} to subscribe")

    def _subscribed(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"gateway exited with {self.process.returncode}")
        return f"{self.client_id} 1 $share/telematics-gateway/v1/vehicles/+/status" in (
            self.broker.log_path.read_text(errors="replace")
        )

    def stop(self) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)


@pytest.fixture
def start_gateway(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes on the test's broker, sharing one data directory."""
    started: list[GatewayProcess] = []

    def start(client_id: str = "gateway-1") -> GatewayProcess:
        gateway = GatewayProcess(mosquitto, tmp_path / "data", client_id)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.stop()


# --- state database -------------------------------------------------------------------------
# Every state-database test runs on both backends: SQLite in a file under tmp_path, and a
# fresh PostgreSQL database per test on the machine's server, dropped afterwards. A test never
# skips when PostgreSQL is down: it fails and says how to start it, because a backend that
# silently stops being tested is a backend that breaks unnoticed.

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
PG_START_HINT = (
    "PostgreSQL is not reachable at 127.0.0.1:5432 (trust auth, user postgres); start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
)


def _pg_admin() -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"{PG_START_HINT}: {exc}")


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    name = f"telematics_test_{uuid.uuid4().hex}"
    with _pg_admin() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with _pg_admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# --- API authentication ---------------------------------------------------------------------
# The API refuses anonymous callers. Tests that are not about authentication use an app with
# a known token secret and first admin, and call it as that admin (user 1 of a fresh state
# database) with a real signed token; tests/test_auth*.py exercise the login flows.

TEST_ADMIN_EMAIL = "admin@test.local"
TEST_ADMIN_PASSWORD = "admin-password-for-tests"
TEST_TOKEN_SECRET = b"0123456789abcdef0123456789abcdef-tests"


def auth_settings_for_tests(**overrides: Any) -> AuthSettings:
    """Known secret and first admin; no rate limits (tests that need them set them)."""
    values: dict[str, Any] = {
        "secret": TEST_TOKEN_SECRET,
        "first_admin_email": TEST_ADMIN_EMAIL,
        "first_admin_password": TEST_ADMIN_PASSWORD,
        "user_command_limit": None,
        "vehicle_command_limit": None,
        "login_limit": None,
        "invitation_limit": None,
    }
    values.update(overrides)
    return AuthSettings(**values)


def bearer(
    user_id: int = 1,
    role: str = "admin",
    account_id: int | None = None,
    *,
    ttl_s: int = 3600,
) -> dict[str, str]:
    """An Authorization header with a real access token signed by TEST_TOKEN_SECRET."""
    token, _ = issue_access_token(
        TEST_TOKEN_SECRET,
        user_id=user_id,
        role=role,
        account_id=account_id,
        now=int(time.time()),
        ttl_s=ttl_s,
    )
    return {"Authorization": f"Bearer {token}"}


def admin_client(settings: ApiSettings, **client_kwargs: Any) -> TestClient:
    """A TestClient of the app for ``settings`` (with the test auth settings unless it has
    its own), calling as the first administrator."""
    if settings.auth == AuthSettings():
        settings = dataclasses.replace(settings, auth=auth_settings_for_tests())
    client = TestClient(create_app(settings), **client_kwargs)
    client.headers.update(bearer())
    return client
