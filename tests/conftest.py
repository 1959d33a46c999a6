"""Shared pytest fixtures, one section per subsystem.

Fixtures here are function-scoped and independent of each other: every test gets its own
resources (ports, directories, processes) and nothing leaks between tests, so tests can run
in any order or alone.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
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
from gateway.broker import BrokerConfig, DynsecControl, MosquittoProcess, free_port
from gateway.broker import auth as broker_auth
from gateway.supervisor import BrokerKeeper, RestartPolicy

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


class IdentitySource:
    """What the state database provides the broker sync, in memory: a version counter and
    the vehicle list (``fail_with`` makes both raise, as an unreachable database would)."""

    def __init__(self) -> None:
        self.version = 0
        self.vehicles: list[broker_auth.VehicleIdentity] = []
        self.fail_with: Exception | None = None
        self.lock = threading.Lock()

    def get_version(self) -> int:
        with self.lock:
            if self.fail_with is not None:
                raise self.fail_with
            return self.version

    def get_identities(self) -> list[broker_auth.VehicleIdentity]:
        with self.lock:
            if self.fail_with is not None:
                raise self.fail_with
            return list(self.vehicles)

    def set(self, vehicles: list[broker_auth.VehicleIdentity]) -> None:
        with self.lock:
            self.vehicles = vehicles
            self.version += 1


SERVICE_USER = "telematics-gateway"
CONTROL_USER = "telematics-broker-admin"


@dataclass
class ClosedBroker:
    """A private broker that refuses anonymous clients, set up as ``telematics up`` sets it
    up: a password file, the Dynamic Security plugin, a service account with the gateway's
    rights, a control account, and vehicles (user name = VIN) confined to their own topics.
    Changes go through the real :class:`~gateway.broker.auth.BrokerAuthSync`."""

    broker: MosquittoProcess
    files: broker_auth.BrokerAuthFiles
    service: tuple[str, str]
    control: tuple[str, str]
    vehicles: dict[str, str | None]
    source: IdentitySource
    sync: broker_auth.BrokerAuthSync
    keeper: BrokerKeeper | None = None

    def add_vehicle(self, vin: str, *, certificate: bool = False) -> str | None:
        """Provision ``vin`` on the running broker (password, or certificate only) and
        apply it; returns the password (None for a certificate-only vehicle)."""
        password = None if certificate else broker_auth.generate_password()
        self.vehicles[vin] = password
        self.apply()
        return password

    def remove_vehicle(self, vin: str) -> None:
        self.vehicles.pop(vin)
        self.apply()

    def apply(self) -> None:
        """Hand the vehicles to the identity source and sync the running broker."""
        self.source.set(self.identities())
        self.sync.sync_once()

    def identities(self) -> list[broker_auth.VehicleIdentity]:
        """The vehicles with their password hashes (one hash per password, so an unchanged
        password renders an unchanged password file)."""
        for pw in self.vehicles.values():
            if pw is not None and pw not in _HASHES:
                _HASHES[pw] = broker_auth.hash_password(pw)
        return [
            broker_auth.VehicleIdentity(vin, None if pw is None else _HASHES[pw])
            for vin, pw in self.vehicles.items()
        ]


_HASHES: dict[str, str] = {}


def start_closed_broker(
    directory: Path,
    *,
    vehicles: dict[str, str | None] | None = None,
    keeper: bool = False,
    restart_policy: RestartPolicy | None = None,
    prime: Callable[[MosquittoProcess], None] | None = None,
    **config: Any,
) -> ClosedBroker:
    """Render the identities, start the broker and return it, ready to use; stop it with
    ``.broker.stop()`` (or ``.keeper.stop()``). ``config`` goes to
    :class:`~gateway.broker.BrokerConfig`. With ``keeper``, a
    :class:`~gateway.supervisor.BrokerKeeper` owns the broker, as under ``telematics up``:
    the sync reloads and restarts through it."""
    files = broker_auth.BrokerAuthFiles(directory / "broker-auth")
    service = (SERVICE_USER, "service-password-1")
    control = (CONTROL_USER, "control-password-1")
    services = [
        broker_auth.ServiceIdentity(service[0], broker_auth.hash_password(service[1])),
        broker_auth.ServiceIdentity(
            control[0], broker_auth.hash_password(control[1]), kind="control"
        ),
    ]
    config.setdefault("port", free_port())
    config.setdefault("extra_lines", ("log_type subscribe",))
    broker_config = BrokerConfig(
        data_dir=directory / "mosquitto",
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
        **config,
    )
    source = IdentitySource()

    def make_sync(
        broker: MosquittoProcess, keeper: BrokerKeeper | None
    ) -> broker_auth.BrokerAuthSync:
        return broker_auth.BrokerAuthSync(
            files,
            services=services,
            version=source.get_version,
            identities=source.get_identities,
            control=DynsecControl(broker.host, broker.port, *control),
            reload=broker.reload,
            restart=None if keeper is None else keeper.restart,
            lock=None if keeper is None else keeper.lock,
            interval_s=0.05,
        )

    owner = None
    if keeper:
        owner = BrokerKeeper(
            broker_config,
            sync=lambda k: make_sync(k.process, k),
            prime=prime,
            policy=restart_policy or BrokerKeeper.POLICY,
        )
        broker, sync = owner.process, owner.sync
        assert sync is not None
    else:
        broker = MosquittoProcess(broker_config)
        sync = make_sync(broker, None)
    closed = ClosedBroker(broker, files, service, control, dict(vehicles or {}), source, sync)
    closed.keeper = owner
    source.set(closed.identities())
    if owner is not None:
        owner.start()
    else:
        sync.render()
        broker.start()
    return closed


@pytest.fixture
def closed_broker(tmp_path: Path) -> Iterator[ClosedBroker]:
    closed = start_closed_broker(tmp_path)
    try:
        yield closed
    finally:
        closed.sync.stop()
        closed.broker.stop()


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
