"""Trips (tag ``fleets``): per vehicle, fleet, driver or account, newest first.

Trips are detected by the rules worker from the committed samples (``gateway.core.fleet
.trips``); a late store-and-forward upload can change the trips of its window, so a trip's
id may change while its vehicle's old data arrives.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, FleetLogDep, Fleets
from gateway.api.models.fleet import TripInProgressOut, TripOut, TripPage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.params import Timestamp, check_range, iso
from gateway.api.routes.alerts import VinQuery
from gateway.api.routes.fleet_common import FLEET_ERRORS, NO_ACCOUNT, IdQuery, owned, scope_of
from gateway.core.fleet.geo import Point
from gateway.core.fleet.state import trip_state_from_json
from gateway.core.fleet.trips import open_trip
from gateway.statedb.fleet_log import FleetLog, TripFilter

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)


@router.get("/v1/trips", response_model=TripPage, summary="List trips")
def list_trips(
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    vin: VinQuery = None,
    fleet_id: IdQuery = None,
    driver_id: IdQuery = None,
    account_id: IdQuery = None,
    start: Annotated[Timestamp | None, Query(description="Started at or after.")] = None,
    end: Annotated[Timestamp | None, Query(description="Started before.")] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> TripPage:
    """Newest first, finished trips. Without `vin`, `fleet_id`, `driver_id` or
    `account_id`: your account's (a driver: the vehicles granted to them). With `vin`,
    `in_progress` is the trip the vehicle is on now (not stored yet, not in reports)."""
    check_range(start, end)
    before = decode_cursor("trips", cursor, (int, int))
    if driver_id is not None:
        driver = owned(principal, fleets.get_driver(driver_id), "driver", driver_id)
        account_id = driver.account_id
    scope = scope_of(context, fleets, principal, vin=vin, fleet_id=fleet_id, account_id=account_id)
    f = TripFilter(scope.account_id, scope.vehicles, scope.fleet_id, driver_id, start, end)
    found = [] if scope.account_id == NO_ACCOUNT else log.trips(f, before=before, limit=limit + 1)
    items, following = page_of(
        [TripOut.model_validate(t) for t in found],
        limit=limit,
        kind="trips",
        key=lambda t: [t.start_at, t.id],
    )
    running = None
    if vin is not None and cursor is None and scope.vehicles and driver_id is None:
        running = _in_progress(log, scope.vehicles[0], start, end)
    return TripPage(items=items, next=following, in_progress=running)


def _lon_lat(p: Point | None) -> tuple[float, float] | None:
    return None if p is None else (p.lon, p.lat)


def _in_progress(
    log: FleetLog, vehicle: tuple[str, int], start: int | None, end: int | None
) -> TripInProgressOut | None:
    """The open trip of the worker's trip state of ``vehicle`` (vin, tenure), if it
    started in [start, end): the state as the worker last wrote it, which it does every
    few seconds (``fleet-worker --flush-seconds``, 5 by default; decision 0050), so the
    trip so far may lack its last seconds (``last_at`` says how far it goes)."""
    state = log.vin_states([vehicle]).get(vehicle)
    trip = None if state is None else open_trip(trip_state_from_json(state[1]))
    if trip is None:
        return None
    if (start is not None and trip.start_ms < start) or (end is not None and trip.start_ms >= end):
        return None
    return TripInProgressOut(
        vin=vehicle[0],
        start_at=trip.start_ms,
        start_at_iso=iso(trip.start_ms),
        last_at=trip.end_ms,
        last_at_iso=iso(trip.end_ms),
        start_place=_lon_lat(trip.start_place),
        last_place=_lon_lat(trip.end_place),
        distance_m=trip.distance_m,
        duration_ms=trip.duration_ms,
        max_speed_kmh=trip.max_speed_kmh,
        avg_speed_kmh=trip.avg_speed_kmh,
    )
