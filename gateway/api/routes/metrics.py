"""``GET /metrics``: Prometheus metrics from the store's persisted counters (tag
``operations``); administrators only. The collector is :mod:`gateway.api.prometheus`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.deps import Caller, Reader, Settings
from gateway.api.errors import described
from gateway.api.prometheus import render_metrics
from gateway.api.security import require_admin

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={
        200: {
            "content": {"text/plain": {}, "application/openmetrics-text": {}},
            "description": "Ingest counters, commit latency histogram and vehicle gauges "
            "in the Prometheus text format (or OpenMetrics, if the Accept header asks).",
        },
        **described(403, 503),
    },
)
def prometheus_metrics(
    principal: Caller, request: Request, reader: Reader, settings: Settings
) -> Response:
    """The ingest counters every gateway process persists in the store, so they survive
    restarts and add up across processes; plus vehicle counts. Send
    `Accept: application/openmetrics-text` for the OpenMetrics format. Administrators
    only (give Prometheus an administrator's API key)."""
    require_admin(principal, "Metrics")
    body, content_type = render_metrics(
        reader,
        request.headers.get("accept"),
        heard_since=settings.clock_ms() - settings.silent_after_ms,
    )
    return Response(body, media_type=content_type)
