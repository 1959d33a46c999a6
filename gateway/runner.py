"""Run one gateway (ingest) process: ``telematics gateway``.

Opens the telemetry store, connects to the broker and ingests until SIGINT or SIGTERM,
then commits what it holds, acknowledges it and disconnects.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from gateway.ingest.service import IngestService, IngestSettings
from gateway.store import SqliteTelemetryStore
from gateway.store.sqlite import Synchronous

__all__ = ["GatewayOptions", "run_gateway"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    db_path: Path
    ingest: IngestSettings
    synchronous: Synchronous = "FULL"


async def _run(options: GatewayOptions) -> None:
    store = SqliteTelemetryStore(options.db_path, synchronous=options.synchronous)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    service = IngestService(options.ingest, store)
    s = options.ingest
    log.info(
        "gateway %s ingesting from mqtt://%s:%d (group %s) into %s",
        s.client_id,
        s.host,
        s.port,
        s.share_group,
        options.db_path,
    )
    try:
        await service.run(stopping)
    finally:
        store.close()
    log.info("gateway %s stopped after %d commits", s.client_id, service.commits)


def run_gateway(options: GatewayOptions) -> None:
    # uvloop was measured and made no difference here (the cost is in Python code)
    asyncio.run(_run(options))
