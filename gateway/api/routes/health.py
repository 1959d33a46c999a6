"""``/healthz`` (the installation) and ``/readyz`` (this API process), both unauthenticated.

``/healthz`` answers for everything: the telemetry store and the state database as this
process reaches them, the broker as its command service's MQTT connection sees it, ingest
from the gateways' heartbeats, and, under ``telematics up``, every supervised process and
the private broker from the supervisor's status file (:mod:`gateway.health` has the files
and the rules). 503 when a required component is down, so a monitor notices a dead broker
or a crash-looping gateway; 200 with ``degraded`` when only an optional part is (the demo
simulator).

``/readyz`` answers whether *this* process can do its job: its databases are readable and,
when it sends commands, its command service is connected. A load balancer sends requests
only to a ready process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from gateway import metrics
from gateway.api.deps import Settings
from gateway.api.errors import store_unavailable
from gateway.api.models import ComponentHealth, ErrorInfo, Health
from gateway.api.params import now_ms
from gateway.api.settings import ApiSettings
from gateway.errors import StoreError
from gateway.health import (
    HEALTH_DIR_NAME,
    HealthReport,
    evaluate,
    read_gateway_heartbeats,
    read_supervisor_status,
)
from gateway.statedb.database import StateDatabase
from gateway.store import open_store

__all__ = ["router"]

log = logging.getLogger("gateway.api")

_READY_COMPONENTS = ("telemetry_store", "state_database", "broker")


def _telemetry_store(store: str | Path) -> ErrorInfo | None:
    try:
        reader = open_store(store, readonly=True)
        try:
            reader.list_vehicles(limit=1)
            counts = reader.counters()
        finally:
            reader.close()
        spooled = counts.get((metrics.SPOOL_SAMPLES, ""), 0.0)
        limit = counts.get((metrics.SPOOL_LIMIT, ""), 0.0)
        if limit and spooled >= limit:  # ingest has stopped acknowledging
            raise StoreError(
                "write to InfluxDB",
                RuntimeError(f"the spool is full ({spooled:.0f} samples): is InfluxDB up?"),
            )
    except StoreError as exc:
        log.warning("health check: the telemetry store failed: %s", exc)
        return store_unavailable(exc, store if isinstance(store, Path) else None)
    return None


def _state_database(request: Request) -> str | None:
    state_db: StateDatabase | None = getattr(request.app.state, "state_db", None)
    if state_db is None:
        return "not opened"
    try:
        with state_db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error: unreachable is unreachable
        log.warning("health check: the state database failed: %s", exc)
        return f"cannot be reached ({type(exc).__name__}: {exc})"
    return None


def _observe(request: Request, settings: ApiSettings) -> tuple[HealthReport, ErrorInfo | None]:
    store_error = _telemetry_store(settings.store)
    commands = getattr(request.app.state, "commands", None)
    health_dir = settings.db_path.parent / HEALTH_DIR_NAME
    report = evaluate(
        telemetry_store=None if store_error is None else store_error.message,
        state_database=_state_database(request),
        command_broker=None if commands is None else commands.connected.is_set(),
        gateways=read_gateway_heartbeats(health_dir),
        supervisor=read_supervisor_status(health_dir),
        now_ms=now_ms(),
    )
    return report, store_error


def _body(
    report: HealthReport, store_error: ErrorInfo | None, names: tuple[str, ...] = ()
) -> Health:
    components = {
        name: ComponentHealth(status=c.status, detail=c.detail, required=c.required)
        for name, c in report.components.items()
        if not names or name in names
    }
    return Health(
        status=report.status,
        database="ok" if store_error is None else "unavailable",
        components=components,
        error=store_error,
    )


def _answer(body: Health) -> JSONResponse:
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=503 if body.status == "unavailable" else 200,
        headers={"Cache-Control": "no-store"},
    )


router = APIRouter(tags=["operations"])

_DOCUMENTED: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "Healthy (`ok`) or `degraded`."},
    503: {"model": Health, "description": "A required component is unavailable."},
}


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Health of the installation, per component",
    responses=_DOCUMENTED,
)
def healthz(request: Request, settings: Settings) -> JSONResponse:
    """Every component this process can see: 200 when all required ones are up
    (`status` `ok`, or `degraded` when an optional part such as the demo simulator is
    failing), 503 otherwise, with what was observed per component. Cheap enough to
    poll every few seconds."""
    report, store_error = _observe(request, settings)
    return _answer(_body(report, store_error))


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="Whether this API process can serve requests",
    responses=_DOCUMENTED,
)
def readyz(request: Request, settings: Settings) -> JSONResponse:
    """200 when this process reads both databases and, if it sends remote commands,
    its command service is connected to the broker; 503 otherwise. For load
    balancers: the rest of the installation (gateways, other parts) is `/healthz`'s
    business."""
    report, store_error = _observe(request, settings)
    parts = {n: report.components[n] for n in _READY_COMPONENTS}
    ready = all(c.status in ("ok", "unknown") for c in parts.values())
    narrowed = HealthReport("ok" if ready else "unavailable", parts)
    return _answer(_body(narrowed, store_error, _READY_COMPONENTS))
