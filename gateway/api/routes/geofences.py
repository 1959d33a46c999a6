"""Geofences (tag ``fleets``): circles and polygons of an account, GeoJSON in and out.

A fence is a GeoJSON ``Feature``: a ``Polygon`` (holes allowed), or a ``Point`` with
``properties.radius_m``; ``properties`` also carry its name, an optional speed limit, an
optional active window (its hours) and whether entering and leaving raise alerts. The
geometry is checked by the core (``gateway.core.fleet.geo``): a ring not closed, a
coordinate out of range ("swapped?"), a polygon over 1,000 positions, a ring that crosses
itself or another, or a hole outside the exterior is a 422 naming the JSON path. A fence
in range but far from every vehicle of its account, that with each position's two numbers
swapped would lie among them (a Munich depot sent as [48.1, 11.5] lands in Somalia), is a
422 ``coordinates_swapped`` unless ``?confirm_far=true``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, CallerAudit, FleetLogDep, Fleets, Settings
from gateway.api.errors import ApiError, invalid_request
from gateway.api.limits import body_limit
from gateway.api.models import ErrorDetail
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
    SWAP_SUSPECT_M,
    Circle,
    GeoJSONError,
    Point,
    Shape,
    check_simple,
    shape_from_geojson,
    shape_to_geojson,
    swapped_near,
)
from gateway.core.fleet.state import window_from_json
from gateway.statedb.fleet_log import FleetLog
from gateway.statedb.fleets import GeofenceRecord, QuotaExceeded

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)

#: a 1,000-position polygon is about 40 KiB of GeoJSON
GEOFENCE_BODY_BYTES = 128 * 1024


#: ``?confirm_far=true``: the fence is where it should be though far from every vehicle
ConfirmFar = Annotated[
    bool,
    Query(
        description="Take the fence even though it looks entered as [latitude, longitude] "
        "(far from every vehicle of the account, and among them with each position's two "
        "numbers swapped): the place is right (a new depot, say)."
    ),
]


def _values(body: GeofenceIn, places: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """The columns of a fence, its geometry normalised by the core; 422 if invalid, or if
    it looks swapped against ``places`` (the account's vehicles' last positions)."""
    p = body.properties
    feature = {"type": "Feature", "geometry": body.geometry, "properties": {"radius_m": p.radius_m}}
    try:
        shape = shape_from_geojson(feature)
        check_simple(shape)
    except GeoJSONError as exc:
        raise invalid_request(["body", exc.where], str(exc), "invalid_geojson") from None
    if places:
        _not_swapped(shape, places)
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


def _not_swapped(shape: Shape, places: list[tuple[float, float]]) -> None:
    """422 ``coordinates_swapped`` if ``shape`` looks entered as [latitude, longitude]."""
    found = swapped_near(shape, [Point(lon, lat) for lon, lat in places])
    if found is None:
        return
    nearest, d = found
    first = shape.center if isinstance(shape, Circle) else shape.exterior[0]
    msg = (
        f"every position is more than {SWAP_SUSPECT_M / 1000:.0f} km from each of the "
        f"account's vehicles, but with longitude and latitude swapped the fence lies "
        f"{d / 1000:.0f} km from one (at [{nearest.lon:.4f}, {nearest.lat:.4f}]): GeoJSON "
        f"positions are [longitude, latitude], so the first one would be "
        f"[{first.lat}, {first.lon}], not [{first.lon}, {first.lat}]"
    )
    raise ApiError(
        422,
        "coordinates_swapped",
        f"The geofence looks entered as [latitude, longitude]: {msg}. Swap the two numbers "
        "of every position and send it again; if the place is right, send it with "
        "?confirm_far=true.",
        [ErrorDetail(loc=["body", "geometry", "coordinates"], msg=msg, type="coordinates_swapped")],
    )


def _places(log: FleetLog, account_id: int, confirm_far: bool) -> list[tuple[float, float]]:
    return [] if confirm_far else log.account_places(account_id)


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
    log: FleetLogDep,
    account_id: IdQuery = None,
    confirm_far: ConfirmFar = False,
) -> GeofenceOut:
    """In the caller's account (an administrator: `account_id`); an account has at most
    1,000 geofences by default (409 `quota_exceeded` beyond). A fence far (over 100 km)
    from every vehicle of the account that would lie among them with each position's
    longitude and latitude swapped is refused (422 `coordinates_swapped`, with the
    positions it probably meant) unless `confirm_far=true`."""
    account = check_account(principal, account_id, manage=True)
    values = _values(body, _places(log, account, confirm_far))
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
    log: FleetLogDep,
    confirm_far: ConfirmFar = False,
) -> GeofenceOut:
    """Vehicles inside it keep their state by the fence's id: a moved boundary is crossed
    with the usual hysteresis. Checked for swapped coordinates as when created."""
    fence = owned(principal, fleets.get_geofence(geofence_id), "geofence", geofence_id, manage=True)
    values = _values(body, _places(log, fence.account_id, confirm_far))
    updated = fleets.update_geofence(geofence_id, values, now=context.now_ms()) or fence
    audit.record(
        "geofence_update",
        account_id=fence.account_id,
        target=f"geofence:{geofence_id}",
        content=body.model_dump_json(),
    )
    return _out(updated)


@router.delete("/v1/geofences/{geofence_id}", status_code=204, summary="Delete a geofence")
def delete_geofence(
    geofence_id: IdPath, principal: Caller, fleets: Fleets, audit: CallerAudit
) -> None:
    """Its alerts stay; vehicles stop being checked against it within seconds."""
    fence = owned(principal, fleets.get_geofence(geofence_id), "geofence", geofence_id, manage=True)
    fleets.delete_geofence(geofence_id)
    audit.record("geofence_delete", account_id=fence.account_id, target=f"geofence:{geofence_id}")
