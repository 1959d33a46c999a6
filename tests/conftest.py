"""Shared pytest fixtures, one section per subsystem.

Fixtures here are function-scoped and independent of each other: every test gets its own
resources (ports, directories, processes) and nothing leaks between tests, so tests can run
in any order or alone.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    broker = MosquittoProcess(BrokerConfig(port=free_tcp_port, data_dir=tmp_path / "mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
