"""Shared pytest fixtures, one section per subsystem.

Fixtures here are function-scoped and independent of each other: every test gets its own
resources (ports, directories, processes) and nothing leaks between tests, so tests can run
in any order or alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.broker import BrokerConfig, MosquittoProcess, free_port

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

    def __init__(self, broker: MosquittoProcess, data_dir: Path, client_id: str) -> None:
        self.broker = broker
        self.data_dir = data_dir
        self.client_id = client_id
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
