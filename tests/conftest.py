"""Shared pytest fixtures, one section per subsystem (the helpers they use, and that test
modules share, are in tests/support/).

Fixtures here are function-scoped and independent of each other: every test gets its own
resources (ports, directories, processes) and nothing leaks between tests, so tests can run
in any order or alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.broker import BrokerConfig, MosquittoProcess, free_port
from tests.support.broker import (
    ClosedBroker,
    start_closed_broker,
)
from tests.support.gateway_process import GatewayProcess

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


@pytest.fixture
def closed_broker(tmp_path: Path) -> Iterator[ClosedBroker]:
    closed = start_closed_broker(tmp_path)
    try:
        yield closed
    finally:
        closed.sync.stop()
        closed.broker.stop()


# --- gateway --------------------------------------------------------------------------------


@pytest.fixture
def start_gateway(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> Iterator[Callable[..., GatewayProcess]]:
    """Start gateway processes on the test's broker, sharing one data directory."""
    started: list[GatewayProcess] = []

    def start(client_id: str = "gateway-1", *extra_args: str) -> GatewayProcess:
        gateway = GatewayProcess(mosquitto, tmp_path / "data", client_id, extra_args)
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
