"""``telematics up``: a private broker, the gateway, the API (and the demo fleet) as child
processes, supervised.

The supervisor restarts a part that dies (with a back-off, and gives up on one that keeps
dying), and on Ctrl-C or SIGTERM stops the parts in reverse order: simulator, API,
gateways (each commits and acknowledges what it holds), then the broker, so nothing that
was acknowledged is lost and nothing unacknowledged is dropped (it waits in the broker's
persisted queue for the next start).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from gateway.broker import BrokerConfig, MosquittoProcess

__all__ = ["Part", "Supervisor"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Part:
    """One supervised child process."""

    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(list(self.argv))
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self, timeout: float) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            p.kill()
            p.wait()


class Supervisor:
    """Runs the parts until a signal arrives or a part fails for good."""

    #: a part that dies this many times within RESTART_WINDOW_S is given up on
    MAX_RESTARTS = 5
    RESTART_WINDOW_S = 60.0

    def __init__(
        self,
        parts: Sequence[Part],
        broker: BrokerConfig | None,
        *,
        on_broker_started: Callable[[MosquittoProcess], Callable[[], None]] | None = None,
    ) -> None:
        """``on_broker_started`` runs once the private broker answers, before the parts
        start (the broker identity sync); it returns what to call at shutdown, before the
        broker stops."""
        self.parts = list(parts)
        self.broker = MosquittoProcess(broker) if broker is not None else None
        self._on_broker_started = on_broker_started
        self._broker_helper_stop: Callable[[], None] | None = None
        self._stop = threading.Event()
        self.failed: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            if self.broker is not None:
                self.broker.start()
                log.info("private broker at %s (log: %s)", self.broker.url, self.broker.log_path)
                if self._on_broker_started is not None:
                    self._broker_helper_stop = self._on_broker_started(self.broker)
            for part in self.parts:
                part.start()
            while not self._stop.wait(0.5):
                self._check_parts()
        finally:
            self.shutdown()
        return 0 if self.failed is None else 1

    def _check_parts(self) -> None:
        now = time.monotonic()
        for part in self.parts:
            p = part.process
            if p is None or p.poll() is None:
                continue
            part.restarts = [t for t in part.restarts if now - t < self.RESTART_WINDOW_S]
            if len(part.restarts) >= self.MAX_RESTARTS:
                self.failed = part.name
                log.error(
                    "%s exited %d times within %.0f s (last exit code %s); stopping everything",
                    part.name,
                    self.MAX_RESTARTS,
                    self.RESTART_WINDOW_S,
                    p.returncode,
                )
                self._stop.set()
                return
            part.restarts.append(now)
            delay = min(2 ** (len(part.restarts) - 1), 10)
            log.warning(
                "%s exited with code %s; restarting in %d s", part.name, p.returncode, delay
            )
            if self._stop.wait(delay):
                return
            part.start()

    def shutdown(self) -> None:
        for part in reversed(self.parts):
            part.stop(timeout=15)
        if self._broker_helper_stop is not None:
            self._broker_helper_stop()
        if self.broker is not None:
            self.broker.stop()
        log.info("all parts stopped")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def data_paths(data_dir: Path) -> tuple[Path, Path]:
    """(telemetry database, broker directory) inside the data directory."""
    return data_dir / "telemetry.db", data_dir / "broker"
