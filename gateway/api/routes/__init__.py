"""The API's routes, one module per resource, each a module-level ``router``
(FastAPI's "bigger applications" layout; docs/decisions/0013-architecture-step.md).

Routes take what they need as dependencies from :mod:`gateway.api.deps` (the caller, the
VIN, the store, the command service, the audit trail), ask :mod:`gateway.core.policy`
who may do what, and raise :class:`gateway.api.errors.ApiError` (or a gateway exception
that ``gateway.api.errors`` maps to a status). :func:`gateway.api.app.create_app` includes
the routers in the order of :func:`routers` (the order of the OpenAPI document).

Routes are plain ``def`` functions where they call SQLite: FastAPI runs them in its
thread pool, which keeps the event loop free. The command routes are coroutines (see
``commands.py``).
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.routes import (
    accounts,
    alerts,
    api_keys,
    assistance,
    audit,
    auth,
    catalog,
    command_jobs,
    commands,
    drivers,
    fault_analytics,
    fleets,
    geofences,
    grants,
    handover,
    health,
    integrations,
    invitations,
    lifecycle,
    metrics,
    positions,
    provisioning,
    quarantine,
    reports,
    service_partners,
    session,
    stream,
    transfers,
    trips,
    users,
    vehicle_events,
    vehicles,
    webhooks,
)
from gateway.api.settings import ApiSettings

__all__ = ["routers"]


def routers(settings: ApiSettings) -> list[APIRouter]:
    """Every router of the app, in the order of the OpenAPI document. The history route is
    the one built per app: its ``limit`` bounds come from ``settings`` and appear in the
    OpenAPI schema."""
    return [
        vehicles.router,
        vehicles.history_router(settings.max_history_limit, settings.default_history_limit),
        catalog.router,
        quarantine.router,
        metrics.router,
        health.router,
        commands.router,
        command_jobs.router,
        stream.router,
        positions.router,
        webhooks.router,
        integrations.router,
        auth.router,
        session.router,
        api_keys.router,
        accounts.router,
        users.router,
        provisioning.router,
        grants.router,
        handover.router,
        invitations.router,
        lifecycle.router,
        transfers.router,
        assistance.router,
        service_partners.router,
        audit.router,
        vehicle_events.router,
        fleets.router,
        drivers.router,
        geofences.router,
        alerts.router,
        trips.router,
        reports.router,
        fault_analytics.router,
    ]
