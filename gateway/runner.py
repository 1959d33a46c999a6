"""Run one gateway (ingest) process: ``telematics gateway``.

Opens the telemetry store, connects to the broker and ingests until SIGINT or SIGTERM,
then commits what it holds, acknowledges it and disconnects. Meanwhile it deletes what is
past its retention (``gateway.retention``) and writes a heartbeat (connected or not) for
``/healthz`` every few seconds (:mod:`gateway.health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.health import (
    HEALTH_DIR_NAME,
    HEARTBEAT_INTERVAL_S,
    gateway_heartbeat_path,
    write_status_file,
)
from gateway.ingest.registry import VehicleRegistry
from gateway.ingest.service import IngestService, IngestSettings
from gateway.notify.wake import FLEET_PREFIX, wake_all
from gateway.retention import RetentionPolicy, run_retention
from gateway.store import CommitResult, open_store
from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES, Synchronous

__all__ = ["GatewayOptions", "run_gateway"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    db_path: Path
    ingest: IngestSettings
    synchronous: Synchronous = "FULL"
    #: state database whose provisioned vehicles alone may send; None: any VIN may
    registry_url: str | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    #: the most bytes of a refused payload the quarantine keeps
    quarantine_payload_bytes: int = DEFAULT_QUARANTINE_PAYLOAD_BYTES
    #: where the heartbeat goes; None: ``health/`` next to the telemetry database
    health_dir: Path | None = None
    #: the telemetry store to open (``gateway.store.resolve_store``); None: ``db_path``
    store: str | Path | None = None
    #: the wake-up sockets' directory: the fleet-worker processes listening there are woken
    #: after each commit that stored samples or events (``gateway.notify.wake``; decision
    #: 0063); None: they find the samples at their next poll
    wake_dir: Path | None = None

    @property
    def store_target(self) -> str | Path:
        return self.db_path if self.store is None else self.store


#: seconds between explicit garbage collections (automatic collection is off, see below)
GC_INTERVAL_S = 10.0


async def _collect_garbage(stopping: asyncio.Event) -> None:
    """Collect reference cycles every GC_INTERVAL_S instead of on allocation counts.

    Ingest allocates and frees millions of small, acyclic objects (decoded samples, rows):
    reference counting frees them, but their sheer number triggers the cyclic collector
    over and over, which measured as 40-70 % of the decode-and-store CPU per sample.
    Objects alive after start-up are frozen out of collection, and the few cycles asyncio
    makes are collected on a timer.
    """
    gc.disable()
    gc.freeze()
    try:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), GC_INTERVAL_S)
            gc.collect()
    finally:
        gc.enable()


async def _heartbeat(
    service: IngestService, options: GatewayOptions, stopping: asyncio.Event
) -> None:
    """Write this gateway's heartbeat every HEARTBEAT_INTERVAL_S until it stops, then
    remove it: a stopped gateway is not a failed one."""
    s = options.ingest
    directory = options.health_dir or options.db_path.parent / HEALTH_DIR_NAME
    path = gateway_heartbeat_path(directory, s.client_id)
    try:
        while not stopping.is_set():
            beat = {
                "client_id": s.client_id,
                "pid": os.getpid(),
                "connected": service.connected.is_set(),
                "updated_at_ms": time.time_ns() // 1_000_000,
                "broker": s.mqtt.url,
            }
            try:
                await asyncio.to_thread(write_status_file, path, beat)
            except OSError as exc:
                log.warning("cannot write the heartbeat %s: %s", path, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), HEARTBEAT_INTERVAL_S)
    finally:
        path.unlink(missing_ok=True)


def _shown(store: str | Path) -> str:
    """A store URL for the log: without its password or token."""
    text = str(store)
    text = re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", text)
    return re.sub(r"token=[^&]*", "token=***", text)


async def _run(options: GatewayOptions) -> None:
    store = open_store(
        options.store_target,
        synchronous=options.synchronous,
        quarantine_payload_bytes=options.quarantine_payload_bytes,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    registry = None
    if options.registry_url is not None:
        registry = VehicleRegistry(options.registry_url)
        await asyncio.to_thread(registry.open)
    service = IngestService(
        options.ingest,
        store,
        on_commit=_waking_workers(options.wake_dir),
        tenure_of=registry.tenure_of if registry is not None else None,
        current_tenures=registry.current_tenures if registry is not None else None,
    )
    s = options.ingest
    log.info(
        "gateway %s ingesting from %s (group %s) into %s",
        s.client_id,
        s.mqtt.url,
        s.share_group,
        _shown(options.store_target),
    )
    collector = asyncio.create_task(_collect_garbage(stopping))
    heartbeat = asyncio.create_task(_heartbeat(service, options, stopping))
    watcher = asyncio.create_task(registry.watch(stopping)) if registry is not None else None
    retention = asyncio.create_task(
        run_retention(options.store_target, options.retention, stopping)
    )
    try:
        await service.run(stopping)
    finally:
        stopping.set()
        await collector
        await retention
        await heartbeat
        if watcher is not None:
            await watcher
        if registry is not None:
            registry.close()
        store.close()
    log.info("gateway %s stopped after %d commits", s.client_id, service.commits)


def _waking_workers(wake_dir: Path | None) -> Callable[[CommitResult], None] | None:
    """After a commit that stored something, a datagram to every fleet-worker process of
    this data directory (a hint: a lost one costs the worker's next poll)."""
    if wake_dir is None:
        return None
    directory = wake_dir

    def woken(result: CommitResult) -> None:
        if result.samples_stored or result.events_stored:
            wake_all(directory, FLEET_PREFIX)

    return woken


def run_gateway(options: GatewayOptions) -> None:
    # uvloop was measured and made no difference here (the cost is in Python code)
    asyncio.run(_run(options))
