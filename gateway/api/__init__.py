"""The HTTP API (FastAPI): a read-only JSON view of the telemetry store, plus health and metrics.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``)::

    GET /v1/vehicles                    vehicles, paged
    GET /v1/vehicles/{vin}              one vehicle and the latest value of each signal
    GET /v1/vehicles/{vin}/history      samples of some signals in a time window
    GET /v1/catalog                     the signal catalog (the device contract)
    GET /v1/quarantine                  refused input with reason and raw payload, paged
    GET /healthz                        the installation, per component: 200, or 503 when a
                                        required one is down (gateway.health has the rules)
    GET /readyz                         whether this API process can serve (its databases,
                                        its command service's broker connection)
    GET /metrics                        Prometheus text: the ingest counters from the store

Layout:
    app.py         ApiSettings, create_app(), the routes and the per-request store dependency
    models.py      pydantic response models (the OpenAPI schema comes from them)
    errors.py      ApiError, the one JSON error format, and the handlers that enforce it
    params.py      times (epoch ms <-> ISO 8601) and query-parameter parsing
    prometheus.py  the Prometheus collector over the store's persisted counters
    health.py      /healthz and /readyz

Imports ``schemas`` (catalog, VIN, reasons), ``gateway.store`` (the read side: TelemetryReader
and SqliteTelemetryStore opened read-only), ``gateway.metrics`` (counter names) and
``gateway.errors``. Nothing in ``gateway`` imports this package except the CLI, so the ingest
process never loads FastAPI, and the API can run as its own process next to the gateways.
"""

from gateway.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
