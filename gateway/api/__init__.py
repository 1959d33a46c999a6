"""The HTTP API (FastAPI): vehicles, their state and history, the quarantine, remote
commands, accounts and access, health and metrics, for people and integrations.

Routes: OpenAPI at ``/docs`` (served offline, ``docs.py``) and ``/openapi.json``; the
README's HTTP API section lists them. Every route but ``/healthz``, ``/readyz``, logging in,
registering and logging out needs a caller (``security.py``); every list answers
``{"items": [...], "next": cursor}`` (``paging.py``); request bodies and every number are
bounded (``limits.py``). ``/healthz`` reports the installation per component (200, or 503
when a required one is down; ``gateway.health`` has the rules), ``/readyz`` whether this API
process can serve.

Layout (FastAPI's "bigger applications"; docs/decisions/0013-architecture-step.md):
    app.py         create_app(): the composition root (routers, state, middleware, handlers)
    settings.py    ApiSettings
    deps.py        the dependencies: caller, VIN, store, command service, audit trail
    routes/        one module per resource, each a module-level router
    audit.py       the audit trail service routes record with
    security.py    authentication of every request, authorization answers (404/403)
    models/        pydantic request and response models (the OpenAPI schema comes from them)
    errors.py      ApiError, the one JSON error format, the gateway exceptions' statuses
    limits.py      body limits (413) and the bounds of ids, pages and responses
    paging.py      the one list convention: items, an opaque cursor, bounded pages
    params.py      times (epoch ms <-> ISO 8601) and query-parameter parsing
    docs.py        /docs from the packaged Swagger UI assets (static/swagger-ui)
    prometheus.py  the Prometheus collector over the store's persisted counters

Who may do what is :mod:`gateway.core.policy` (pure); the routes turn its answers into 404
and 403.

Imports ``schemas`` (catalog, VIN, reasons), ``gateway.core`` (the policy), ``gateway.store``
(the read side: a TelemetryReader from open_store, read-only),
``gateway.statedb`` (accounts, audit, commands), ``gateway.auth`` (passwords, tokens),
``gateway.commands`` (the command service), ``gateway.metrics`` and ``gateway.errors``.
Nothing in ``gateway`` imports this package except the CLI, so the ingest process never
loads FastAPI, and the API can run as its own process next to the gateways.
"""

from __future__ import annotations

from gateway.api.app import create_app
from gateway.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
