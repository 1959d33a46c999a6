"""How soon a sample moves on from each stage of the alert path (decision 0063): the gateway
commits a lone sample when its input pauses instead of after the whole batch delay, and
wakes the fleet-worker processes after the commit; a worker that has caught up starts its
next pass on that wake-up instead of at its poll. Real Mosquitto, real gateway process,
real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from gateway.fleet.worker import WorkerSettings, WorkerThread
from gateway.notify.wake import FLEET_PREFIX, WAKE_DIR_NAME, WakeSocket, wake_all
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest import publish, query, sample, telemetry
from tests.support.waiting import wait_until

VIN = "WVWZZZ1JZXW006301"


def _stored(db_path: Path, seq: int) -> bool:
    if not db_path.exists():
        return False
    try:
        return bool(query(db_path, "SELECT 1 FROM samples WHERE seq = ?", seq))
    except Exception:  # the schema is being created
        return False


def test_a_lone_sample_is_committed_when_the_input_pauses_not_after_the_batch_delay(
    start_gateway: Callable[..., GatewayProcess],
) -> None:
    """With a 3-s batch delay, a lone sample used to wait the 3 s for its batch (and the
    rules behind it); it is committed milliseconds after it arrived now. The bound of 1.5 s
    is the loaded machine's margin (mosquitto_pub's start included), not the expectation."""
    gateway = start_gateway("gateway-1", "--batch-delay-ms", "3000")
    for seq in (1, 2, 3):
        started = time.monotonic()
        publish(gateway.broker, telemetry(VIN), sample(VIN, seq))
        wait_until(partial(_stored, gateway.db_path, seq), timeout=10, what="the commit")
        took = time.monotonic() - started
        assert took < 1.5, f"sample {seq} committed {took:.2f} s after publishing"


def test_the_gateway_wakes_the_fleet_workers_after_a_commit_and_only_them(
    start_gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    gateway = start_gateway("gateway-1")
    directory = gateway.data_dir / WAKE_DIR_NAME
    worker = WakeSocket(directory)
    assert worker.open()
    api = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # an API process's socket
    api.bind(str(directory / "api-1.sock"))
    api.setblocking(False)
    try:
        assert not worker.wait(0.3)  # nothing committed, nothing sent
        publish(gateway.broker, telemetry(VIN), sample(VIN, 1))
        assert worker.wait(10), "no wake-up after the commit"
        assert _stored(gateway.db_path, 1)
        with pytest.raises(BlockingIOError):
            api.recv(16)  # the API is woken by whoever stores events, not by ingest
    finally:
        worker.close()
        api.close()


class _CountingWorker:
    """What WorkerThread needs of a RulesWorker: a step that finds nothing (so the thread
    pauses for its poll between steps), counted."""

    def __init__(self, poll_s: float) -> None:
        self.settings = WorkerSettings(poll_s=poll_s)
        self.steps = 0
        self.stepped = threading.Event()

    def step(self) -> int:
        self.steps += 1
        self.stepped.set()
        return 0

    def stop(self) -> None:
        pass


def test_a_worker_that_caught_up_starts_its_next_pass_on_a_wake_up_not_at_its_poll(
    tmp_path: Path,
) -> None:
    """A 60-s poll: without the wake-up the second pass would come a minute later."""
    worker = _CountingWorker(poll_s=60.0)
    thread = WorkerThread(worker, busy=lambda: False)  # type: ignore[arg-type]
    woken = WakeSocket(tmp_path / WAKE_DIR_NAME)
    assert woken.open()
    thread.wake_wait = woken.wait
    thread.start()
    try:
        assert worker.stepped.wait(10)
        time.sleep(0.3)
        assert worker.steps == 1  # idle: it waits
        worker.stepped.clear()
        assert wake_all(tmp_path / WAKE_DIR_NAME, FLEET_PREFIX) == 1
        assert worker.stepped.wait(5), "the wake-up did not start a pass"
        assert worker.steps == 2
    finally:
        started = time.monotonic()
        thread.stop(timeout=5)
        woken.close()
    assert time.monotonic() - started < 2  # stopping does not wait out the poll either
