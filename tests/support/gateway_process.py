"""The gateway's ingest service as a child process, for end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.broker import MosquittoProcess
from tests.support.waiting import wait_until


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
        # (a Python process's start takes seconds on a loaded 2-core machine: a helper saw 20 s)
        wait_until(self._subscribed, timeout=60, what=f"gateway {self.client_id} to subscribe")

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
