"""The HTTP API (FastAPI): vehicles, their state and history, the quarantine, remote
commands, accounts and access, health and metrics, for people and integrations.

Routes: OpenAPI at ``/docs`` (served offline, ``docs.py``) and ``/openapi.json``; the
README's HTTP API section lists them. Every route but ``/healthz``, ``/readyz``, logging in,
registering and logging out needs a caller (``security.py``); every list answers
``{"items": [...], "next": cursor}`` (``paging.py``); request bodies and every number are
bounded (``limits.py``). ``/healthz`` reports the installation per component (200, or 503
when a required one is down; ``gateway.health`` has the rules), ``/readyz`` whether this API
process can serve.

Layout:
    app.py         ApiSettings, create_app(), the telemetry routes, the per-request store
    commands.py    remote commands: create, read, list, cancel, follow (SSE)
    accounts.py    log in, register, API keys, accounts, users, provisioning, grants, audit
    security.py    authentication of every request, authorization answers (404/403)
    models.py      pydantic response models (the OpenAPI schema comes from them)
    errors.py      ApiError, the one JSON error format, and the handlers that enforce it
    limits.py      body limits (413) and the bounds of ids, pages and responses
    paging.py      the one list convention: items, an opaque cursor, bounded pages
    params.py      times (epoch ms <-> ISO 8601) and query-parameter parsing
    docs.py        /docs from the packaged Swagger UI assets (static/swagger-ui)
    prometheus.py  the Prometheus collector over the store's persisted counters
    health.py      /healthz and /readyz

Imports ``schemas`` (catalog, VIN, reasons), ``gateway.store`` (the read side: TelemetryReader
and SqliteTelemetryStore opened read-only), ``gateway.metrics`` (counter names) and
``gateway.errors``. Nothing in ``gateway`` imports this package except the CLI, so the ingest
process never loads FastAPI, and the API can run as its own process next to the gateways.
"""

from gateway.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
