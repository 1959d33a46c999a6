"""``telematics fleet-worker``: the fleet rules and trips worker as a process of its own.

It runs one :class:`~gateway.fleet.worker.RulesWorker` in a :class:`WorkerThread` (without
the rest the API's thread takes while people are served: this process serves nobody) and
the maintenance check (decision 0026: it runs where the rules run), until SIGTERM or
SIGINT, then gives its partitions back so another worker takes them at once instead of
after the lease. Several such processes share the partitions evenly (``take_partitions``);
each may run at a lower CPU priority than the API (``--nice``) so that a person's request
is served first on a busy machine. What it stores (alerts, trips, their events and webhook
deliveries) reaches the API's streams and webhooks through the state database's event log,
which every API process polls; after each commit it wakes the API processes of its data
directory so they read it at once (``gateway.notify.wake``; decision 0029). It listens on a
socket of its own there too: the gateway wakes it after each commit of telemetry, so a
worker that has caught up starts its next pass then rather than at its poll (decision 0063).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from gateway.fleet.maintenance import start_maintenance
from gateway.fleet.worker import RulesWorker, WorkerSettings, WorkerThread
from gateway.notify.wake import WakeSocket, wake_all
from gateway.statedb.database import StateDatabase
from gateway.statedb.fleet_log import FleetLog
from gateway.statedb.fleets import FleetRepository
from gateway.store import open_store

__all__ = ["FleetWorkerOptions", "run_fleet_worker"]

log = logging.getLogger(__name__)

#: the collector's thresholds in this process (Python's default: 700, 10, 10). The worker
#: keeps every held vehicle's state in memory and replaces a part of it each pass, so with
#: the default a full collection walked those states every few passes: a third of the
#: process's CPU per sample (decision 0037). Its objects form no cycles worth collecting
#: often; a generation-0 collection per 10,000 allocations keeps the memory bounded.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Freeze what start-up allocated (modules, the database's metadata: never garbage)
    and make collections rarer (:data:`GC_THRESHOLDS`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(frozen=True, slots=True)
class FleetWorkerOptions:
    state_db_url: str
    #: the telemetry store (``gateway.store.resolve_store``)
    store: str | Path
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    #: run the maintenance check too (every rules process does by default; it records each
    #: due item once whichever process finds it)
    maintenance: bool = True
    #: the wake-up sockets' directory (``gateway.notify.wake``): the API processes' (woken
    #: after a commit) and this process's own (the gateway wakes it); None: both poll
    wake_dir: Path | None = None


def run_fleet_worker(options: FleetWorkerOptions, stop: threading.Event | None = None) -> None:
    """Run until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    stop = stop or _stop_on_signals()
    state_db = StateDatabase(options.state_db_url)
    try:
        state_db.upgrade()
        store = options.store
        worker = RulesWorker(
            FleetLog(state_db),
            FleetRepository(state_db),
            lambda: open_store(store, readonly=True),
            options.worker,
        )
        thread = WorkerThread(worker, busy=lambda: False)
        wake_dir = options.wake_dir
        if wake_dir is not None:  # its alerts on the API's streams now, not at their poll

            def wake() -> None:
                wake_all(wake_dir)

            thread.on_commit = wake
        woken = WakeSocket(wake_dir) if wake_dir is not None else None
        if woken is not None and woken.open():  # a pass when the gateway committed
            thread.wake_wait = woken.wait
        maintenance = start_maintenance(state_db, store) if options.maintenance else None
        tune_gc()
        thread.start()
        log.info(
            "fleet worker %s running (%d partitions, lease %d ms)",
            options.worker.owner,
            options.worker.partitions,
            options.worker.lease_ms,
        )
        try:
            stop.wait()
        finally:
            if maintenance is not None:
                maintenance.stop()
            thread.stop()  # gives the partitions back
            if woken is not None:
                woken.close()
            log.info("fleet worker %s stopped", options.worker.owner)
    finally:
        state_db.dispose()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return stop
