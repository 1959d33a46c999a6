"""Trips (tag ``fleets``): per vehicle, fleet, driver or account, newest first.

Trips are detected by the rules worker from the committed samples (``gateway.core.fleet
.trips``); a late store-and-forward upload can change the trips of its window, so a trip's
id may change while its vehicle's old data arrives.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, FleetLogDep, Fleets
from gateway.api.models.fleet import TripOut, TripPage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.params import Timestamp, check_range
from gateway.api.routes.alerts import VinQuery
from gateway.api.routes.fleet_common import FLEET_ERRORS, NO_ACCOUNT, IdQuery, owned, scope_of
from gateway.statedb.fleet_log import TripFilter

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
    """Newest first. Without `vin`, `fleet_id`, `driver_id` or `account_id`: your
    account's (a driver: the vehicles granted to them)."""
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
    return TripPage(items=items, next=following)
