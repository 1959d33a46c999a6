"""The API's dependencies, in one place: who calls, the validated VIN, the stores and
services of the app, and the audit trail.

Every dependency reads what it hands out from ``request.app.state`` (set up by
:func:`gateway.api.app.create_app` and its lifespan), never from a closure, so the routes
are module-level functions in module-level routers (``gateway.api.routes``), FastAPI's
"bigger applications" layout (docs/decisions/0013-architecture-step.md).

A dependency that only hands out what the app holds is a coroutine (``async def``): FastAPI
runs a plain function dependency on its thread pool, a hop to another thread and back for
each dependency of each request, which cost more than the function itself (decision 0035).
Its plain twin (``settings_of``, ``service_of``) is for callers outside FastAPI's
dependency injection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from pydantic import WithJsonSchema

from gateway.api.audit import AuditTrail
from gateway.api.errors import ApiError
from gateway.api.models import ErrorDetail
from gateway.api.security import (
    Auth,
    AuthContext,
    Caller,
    auth_context,
    current_principal,
)
from gateway.api.settings import ApiSettings
from gateway.commands.jobs import JobService
from gateway.commands.service import CommandService
from gateway.core.policy import Principal
from gateway.notify import EventBus, WebhookWorker
from gateway.statedb.fleet_log import FleetLog
from gateway.statedb.fleets import FleetRepository
from gateway.statedb.integrations import IntegrationRepository
from gateway.statedb.webhooks import WebhookRepository
from gateway.store import TelemetryReader, open_store
from schemas import VIN_PATTERN, InvalidVinError, validate_vin

__all__ = [
    "Audit",
    "Auth",
    "Bus",
    "Caller",
    "CallerAudit",
    "FleetLogDep",
    "Fleets",
    "Jobs",
    "Reader",
    "Service",
    "Settings",
    "Vin",
    "Webhooks",
    "api_settings",
    "audit_trail",
    "caller_audit",
    "command_service",
    "open_reader",
    "service_of",
    "settings_of",
    "valid_vin",
    "vin_or_422",
]


def settings_of(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.settings
    return settings


async def api_settings(request: Request) -> ApiSettings:
    return settings_of(request)


Settings = Annotated[ApiSettings, Depends(api_settings)]


# --- the telemetry store -------------------------------------------------------------------


def open_reader(request: Request) -> Iterator[TelemetryReader]:
    """A read-only store for the duration of one request.

    Each request opens its own read-only connection and closes it when done: opening a
    SQLite connection costs tens of microseconds, far less than any query here, and a
    connection per request means no connection is ever shared between threads, no cache
    to invalidate when the file is replaced, and a database that comes back after a
    failure is picked up by the next request. Read-only connections cannot take the write
    lock, so the API never delays ingest. A database that cannot be opened raises
    :class:`~gateway.errors.StoreError`, answered with 503 (``gateway.api.errors``).
    """
    reader = open_store(settings_of(request).store, readonly=True)
    try:
        yield reader
    finally:
        reader.close()


Reader = Annotated[TelemetryReader, Depends(open_reader)]


# --- the VIN -------------------------------------------------------------------------------


def vin_or_422(vin: str, loc: list[str | int]) -> str:
    """``vin`` if it is a valid VIN (:func:`schemas.validate_vin`, the one VIN rule), else
    422 ``invalid_vin`` naming where it was (``loc``: in the path or the body)."""
    try:
        return validate_vin(vin)
    except InvalidVinError as exc:
        hint = " VINs are upper case; GET /v1/vehicles lists the known ones."
        raise ApiError(
            422,
            "invalid_vin",
            f"{exc}.{hint if loc[0] == 'path' else ''}",
            [ErrorDetail(loc=loc, msg=str(exc), type="invalid_vin", input=vin)],
        ) from None


async def valid_vin(
    vin: Annotated[
        str,
        PathParam(description="Vehicle Identification Number (ISO 3779), 17 characters."),
        # documents the format without letting FastAPI reject it: a bad VIN deserves its
        # own error code (invalid_vin) and message, not a generic pattern mismatch
        WithJsonSchema({"type": "string", "pattern": VIN_PATTERN, "example": "WVWZZZ1JZXW000001"}),
    ],
) -> str:
    return vin_or_422(vin, ["path", "vin"])


#: the ``{vin}`` of a path, validated (422 ``invalid_vin``) and documented with its pattern
Vin = Annotated[str, Depends(valid_vin)]


# --- remote commands -----------------------------------------------------------------------


def service_of(request: Request) -> CommandService:
    """The app's command service; 503 ``commands_unavailable`` when this API process runs
    without a broker (the routes stay in the OpenAPI document either way)."""
    service: CommandService | None = getattr(request.app.state, "commands", None)
    if service is None:
        raise ApiError(
            503,
            "commands_unavailable",
            "Remote commands are not configured on this API process: start it with a broker "
            "(telematics up, or telematics api --mqtt-url mqtt://host:port).",
        )
    return service


async def command_service(request: Request) -> CommandService:
    return service_of(request)


Service = Annotated[CommandService, Depends(command_service)]


# --- fleet management ----------------------------------------------------------------------


async def fleet_repository(request: Request) -> FleetRepository:
    repo: FleetRepository = request.app.state.fleets
    return repo


async def fleet_log(request: Request) -> FleetLog:
    log: FleetLog = request.app.state.fleet_log
    return log


Fleets = Annotated[FleetRepository, Depends(fleet_repository)]
FleetLogDep = Annotated[FleetLog, Depends(fleet_log)]


async def job_service(request: Request) -> JobService:
    """The app's bulk-command service; 503 like :func:`command_service` without one."""
    service_of(request)
    jobs: JobService = request.app.state.jobs
    return jobs


Jobs = Annotated[JobService, Depends(job_service)]


# --- notifications -------------------------------------------------------------------------


async def event_bus(request: Request) -> EventBus:
    bus: EventBus = request.app.state.events
    return bus


Bus = Annotated[EventBus, Depends(event_bus)]


async def integrations(request: Request) -> IntegrationRepository:
    repo: IntegrationRepository = request.app.state.integrations
    return repo


Integrations = Annotated[IntegrationRepository, Depends(integrations)]


class WebhookAccess:
    """The webhooks repository and the worker to wake after queueing a delivery."""

    def __init__(self, repo: WebhookRepository, worker: WebhookWorker) -> None:
        self.repo, self.worker = repo, worker


async def webhooks(request: Request) -> WebhookAccess:
    return WebhookAccess(request.app.state.webhooks, request.app.state.webhook_worker)


Webhooks = Annotated[WebhookAccess, Depends(webhooks)]


# --- the audit trail -----------------------------------------------------------------------


async def audit_trail(
    request: Request, context: Annotated[AuthContext, Depends(auth_context)]
) -> AuditTrail:
    """The trail of a request that may be anonymous (logging in, registering)."""
    return AuditTrail(context, request)


async def caller_audit(
    request: Request,
    context: Annotated[AuthContext, Depends(auth_context)],
    principal: Annotated[Principal, Depends(current_principal)],
) -> AuditTrail:
    """The trail of an authenticated request: its entries are by the caller."""
    return AuditTrail(context, request, principal)


Audit = Annotated[AuditTrail, Depends(audit_trail)]
CallerAudit = Annotated[AuditTrail, Depends(caller_audit)]
