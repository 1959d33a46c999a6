"""Geofences (tag ``fleets``): circles and polygons of an account, GeoJSON in and out.

A fence is a GeoJSON ``Feature``: a ``Polygon`` (holes allowed), or a ``Point`` with
``properties.radius_m``; ``properties`` also carry its name, an optional speed limit, an
optional active window (its hours) and whether entering and leaving raise alerts. The
geometry is checked by the core (``gateway.core.fleet.geo``): a ring not closed, a
coordinate out of range ("swapped?"), a polygon over 1,000 positions, a ring that crosses
itself or another, or a hole outside the exterior is a 422 naming the JSON path.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import Auth, Caller, CallerAudit, Fleets, Settings
from gateway.api.errors import invalid_request
from gateway.api.limits import body_limit
from gateway.api.models.accounts import IdPath
from gateway.api.models.fleet import GeofenceIn, GeofenceOut, GeofencePage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.fleet_common import (
    FLEET_ERRORS,
    NO_ACCOUNT,
    IdQuery,
    check_account,
    list_account,
    owned,
    quota_exceeded,
)
from gateway.core.fleet.geo import (
    GeoJSONError,
    check_simple,
    shape_from_geojson,
    shape_to_geojson,
)
from gateway.core.fleet.state import window_from_json
from gateway.statedb.fleets import GeofenceRecord, QuotaExceeded

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)

#: a 1,000-position polygon is about 40 KiB of GeoJSON
GEOFENCE_BODY_BYTES = 128 * 1024


def _values(body: GeofenceIn) -> dict[str, Any]:
    """The columns of a fence, its geometry normalised by the core; 422 if invalid."""
    p = body.properties
    feature = {"type": "Feature", "geometry": body.geometry, "properties": {"radius_m": p.radius_m}}
    try:
        shape = shape_from_geojson(feature)
        check_simple(shape)
    except GeoJSONError as exc:
        raise invalid_request(["body", exc.where], str(exc), "invalid_geojson") from None
    window = p.active_window.model_dump() if p.active_window is not None else None
    try:
        window_from_json(window)
    except ValueError as exc:
        raise invalid_request(
            ["body", "properties", "active_window"], str(exc), "invalid_window"
        ) from None
    return {
        "name": p.name,
        "geometry": shape_to_geojson(shape),
        "speed_limit_kmh": p.speed_limit_kmh,
        "active_window": window,
        "alert_enter": p.alert_enter,
        "alert_exit": p.alert_exit,
    }


def _out(g: GeofenceRecord) -> GeofenceOut:
    properties = {
        **dict(g.geometry.get("properties") or {}),
        "name": g.name,
        "account_id": g.account_id,
        "speed_limit_kmh": g.speed_limit_kmh,
        "active_window": g.active_window,
        "alert_enter": g.alert_enter,
        "alert_exit": g.alert_exit,
        "created_at": g.created_at,
        "updated_at": g.updated_at,
    }
    return GeofenceOut(id=g.id, geometry=dict(g.geometry["geometry"]), properties=properties)


@router.post(
    "/v1/geofences",
    response_model=GeofenceOut,
    status_code=201,
    summary="Create a geofence",
    openapi_extra=body_limit(GEOFENCE_BODY_BYTES),
)
def create_geofence(
    body: GeofenceIn,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
    settings: Settings,
    account_id: IdQuery = None,
) -> GeofenceOut:
    """In the caller's account (an administrator: `account_id`); an account has at most
    1,000 geofences by default (409 `quota_exceeded` beyond)."""
    account = check_account(principal, account_id, manage=True)
    values = _values(body)
    try:
        fence = fleets.create_geofence(
            account_id=account,
            values=values,
            now=context.now_ms(),
            max_count=settings.fleet_quotas.geofences,
        )
    except QuotaExceeded as exc:
        raise quota_exceeded(exc) from None
    audit.record("geofence_create", account_id=account, target=f"geofence:{fence.id}")
    return _out(fence)


@router.get("/v1/geofences", response_model=GeofencePage, summary="List geofences")
def list_geofences(
    principal: Caller,
    fleets: Fleets,
    account_id: IdQuery = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> GeofencePage:
    """Your account's fences as GeoJSON Features (an administrator: every account's, or
    `account_id`'s), by id."""
    after = cursor_key("geofences", cursor, int)
    scope = list_account(principal, account_id)
    found = (
        []
        if scope == NO_ACCOUNT
        else fleets.list_geofences(account_id=scope, after=after, limit=limit + 1)
    )
    items, following = page_of(
        [_out(g) for g in found], limit=limit, kind="geofences", key=lambda g: [g.id]
    )
    return GeofencePage(items=items, next=following)


@router.get("/v1/geofences/{geofence_id}", response_model=GeofenceOut, summary="One geofence")
def get_geofence(geofence_id: IdPath, principal: Caller, fleets: Fleets) -> GeofenceOut:
    """As a GeoJSON Feature."""
    return _out(owned(principal, fleets.get_geofence(geofence_id), "geofence", geofence_id))


@router.put(
    "/v1/geofences/{geofence_id}",
    response_model=GeofenceOut,
    summary="Replace a geofence",
    openapi_extra=body_limit(GEOFENCE_BODY_BYTES),
)
def replace_geofence(
    geofence_id: IdPath,
    body: GeofenceIn,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
) -> GeofenceOut:
    """Vehicles inside it keep their state by the fence's id: a moved boundary is crossed
    with the usual hysteresis."""
    fence = owned(principal, fleets.get_geofence(geofence_id), "geofence", geofence_id, manage=True)
    updated = fleets.update_geofence(geofence_id, _values(body), now=context.now_ms()) or fence
    audit.record("geofence_update", account_id=fence.account_id, target=f"geofence:{geofence_id}")
    return _out(updated)


@router.delete("/v1/geofences/{geofence_id}", status_code=204, summary="Delete a geofence")
def delete_geofence(
    geofence_id: IdPath, principal: Caller, fleets: Fleets, audit: CallerAudit
) -> None:
    """Its alerts stay; vehicles stop being checked against it within seconds."""
    fence = owned(principal, fleets.get_geofence(geofence_id), "geofence", geofence_id, manage=True)
    fleets.delete_geofence(geofence_id)
    audit.record("geofence_delete", account_id=fence.account_id, target=f"geofence:{geofence_id}")
