"""A private InfluxDB 1.x server for the tests: ``influxd`` on free ports with its own data
directory and config, started once per test session (:func:`influxdb`) or per test where a
test stops and restarts it (:func:`start_influxd`, the store-outage tests).

Why a real server: the InfluxDB store speaks the v1 HTTP API (line protocol, InfluxQL), and
only a real server shows what it does with escaping, field types, overwrites of the same
point and a connection refused mid-stream. Debian's ``influxdb`` package (1.6.7) is what
``scripts/test.sh`` installs when ``influxd`` is missing; a test that needs it fails with
that hint rather than skipping, so CI cannot silently lose the InfluxDB half of the
contract suite.

The server binds only 127.0.0.1 (the HTTP port and the RPC port used for backups), has no
authentication, sends no usage reports and keeps no ``_internal`` monitoring database.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from gateway.broker import free_port

__all__ = [
    "InfluxServer",
    "influxdb",
    "influxdb_url",
    "run_continuous_query_now",
    "start_influxd",
]

INSTALL_HINT = (
    "influxd is not installed: run scripts/test.sh (it installs Debian's 'influxdb' "
    "package when missing) or apt-get install influxdb"
)

_CONFIG = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  flux-enabled = false
[continuous_queries]
  enabled = true
  log-enabled = false
[logging]
  level = "warn"
"""


@dataclass
class InfluxServer:
    """One ``influxd`` process; :meth:`stop` and :meth:`start` keep its data directory, so
    a restarted server has what was written before."""

    root: Path
    http_port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: HTTP authentication on (the first user is created without credentials)
    auth: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def store_url(self, database: str) -> str:
        """An ``influxdb://`` store URL for ``database`` on this server."""
        return f"influxdb://127.0.0.1:{self.http_port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        binary = shutil.which("influxd") or "/usr/bin/influxd"
        if not Path(binary).exists():
            pytest.fail(INSTALL_HINT)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root,
                rpc_port=self.rpc_port,
                http_port=self.http_port,
                auth="true" if self.auth else "false",
            )
        )
        log = (self.root / "influxd.log").open("ab")
        self.process = subprocess.Popen(
            [binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"influxd exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/ping", timeout=1.0).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping in {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        """Terminate this server (its own PID only) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def log_tail(self) -> str:
        path = self.root / "influxd.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def new_database_url(self) -> str:
        """A store URL for a database no other test uses (the store creates it)."""
        return self.store_url(f"t_{uuid.uuid4().hex[:12]}")


def start_influxd(root: Path) -> InfluxServer:
    """A started server of its own under ``root``; the caller stops it."""
    server = InfluxServer(root)
    server.start()
    return server


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """The session's InfluxDB server, shared by every test that asks: each test uses a
    database of its own (:func:`influxdb_url`)."""
    server = start_influxd(tmp_path_factory.mktemp("influxdb"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def influxdb_url(influxdb: InfluxServer) -> str:
    """A store URL for a fresh database on the session's server."""
    return influxdb.new_database_url()


def run_continuous_query_now(base_url: str, database: str, name: str, since: str) -> None:
    """Run a continuous query's own ``SELECT ... INTO`` once over ``now() - since`` to
    now, as InfluxDB's scheduler would at its next interval (1.x runs CQs only on their
    own clock, a minute here). The statement is the one ``SHOW CONTINUOUS QUERIES``
    reports, so a change to the store's CQ is what gets run."""
    body = httpx.get(
        f"{base_url}/query", params={"q": "SHOW CONTINUOUS QUERIES"}, timeout=10
    ).json()
    statements = [
        query
        for series in body["results"][0]["series"]
        if series["name"] == database
        for cq_name, query in series["values"]
        if cq_name == name
    ]
    assert statements, f"no continuous query {name} on {database}"
    select = statements[0].split(" BEGIN ", 1)[1].rsplit(" END", 1)[0]
    head, group_by = select.split(" GROUP BY ", 1)
    statement = f"{head} WHERE time >= now() - {since} GROUP BY {group_by}"
    answer = httpx.post(
        f"{base_url}/query", params={"db": database}, data={"q": statement}, timeout=30
    ).json()
    assert "error" not in answer["results"][0], answer
