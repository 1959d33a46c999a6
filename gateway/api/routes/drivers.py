"""Drivers and their assignments to vehicles (tag ``fleets``).

A driver is a person of an account (with a login or without); an assignment puts them on
one of the account's vehicles from ``start_at`` until ``end_at`` (open-ended without), and
every trip and alert that starts inside it names the driver.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import Auth, Caller, CallerAudit, Fleets, Settings, vin_or_422
from gateway.api.errors import ApiError, invalid_request
from gateway.api.models.accounts import IdPath
from gateway.api.models.fleet import (
    AssignmentOut,
    AssignmentPage,
    AssignmentRequest,
    DriverOut,
    DriverPage,
    DriverRequest,
    DriverUpdate,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.common import user_not_found
from gateway.api.routes.fleet_common import (
    FLEET_ERRORS,
    NO_ACCOUNT,
    IdQuery,
    check_account,
    list_account,
    owned,
    quota_exceeded,
)
from gateway.api.security import AuthContext
from gateway.core.policy import Principal
from gateway.statedb.accounts import NotFound
from gateway.statedb.fleets import DriverRecord, FleetRepository, QuotaExceeded

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)


def _driver(
    fleets: FleetRepository, principal: Principal, driver_id: int, *, manage: bool = False
) -> DriverRecord:
    return owned(principal, fleets.get_driver(driver_id), "driver", driver_id, manage=manage)


def _check_user(context: AuthContext, user_id: int | None, account_id: int) -> None:
    """A driver's login must be a user of the driver's account."""
    if user_id is None:
        return
    user = context.accounts.get_user(user_id)
    if user is None or user.account_id != account_id:
        raise user_not_found(user_id)


@router.post("/v1/drivers", response_model=DriverOut, status_code=201, summary="Add a driver")
def create_driver(
    body: DriverRequest,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
    settings: Settings,
) -> DriverOut:
    """In your account (an administrator: `account_id`), optionally linked to a user of it;
    an account has at most 10,000 drivers by default (409 `quota_exceeded` beyond)."""
    account_id = check_account(principal, body.account_id, manage=True)
    _check_user(context, body.user_id, account_id)
    try:
        driver = fleets.create_driver(
            account_id=account_id,
            name=body.name,
            user_id=body.user_id,
            now=context.now_ms(),
            max_count=settings.fleet_quotas.drivers,
        )
    except QuotaExceeded as exc:
        raise quota_exceeded(exc) from None
    audit.record("driver_create", account_id=account_id, target=f"driver:{driver.id}")
    return DriverOut.model_validate(driver)


@router.get("/v1/drivers", response_model=DriverPage, summary="List drivers")
def list_drivers(
    principal: Caller,
    fleets: Fleets,
    account_id: IdQuery = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> DriverPage:
    """Your account's drivers (an administrator: every account's, or `account_id`'s), by id."""
    after = cursor_key("drivers", cursor, int)
    scope = list_account(principal, account_id)
    found = (
        []
        if scope == NO_ACCOUNT
        else fleets.list_drivers(account_id=scope, after=after, limit=limit + 1)
    )
    items, following = page_of(
        [DriverOut.model_validate(d) for d in found],
        limit=limit,
        kind="drivers",
        key=lambda d: [d.id],
    )
    return DriverPage(items=items, next=following)


@router.get("/v1/drivers/{driver_id}", response_model=DriverOut, summary="One driver")
def get_driver(driver_id: IdPath, principal: Caller, fleets: Fleets) -> DriverOut:
    """For the account's fleet readers."""
    return DriverOut.model_validate(_driver(fleets, principal, driver_id))


@router.patch(
    "/v1/drivers/{driver_id}",
    response_model=DriverOut,
    summary="Rename a driver or link their login",
)
def update_driver(
    driver_id: IdPath,
    body: DriverUpdate,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
) -> DriverOut:
    """Only the fields given change; a login must be a user of the driver's account."""
    driver = _driver(fleets, principal, driver_id, manage=True)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise invalid_request(["body", "name"], "a driver keeps a name", "missing")
    _check_user(context, changes.get("user_id"), driver.account_id)
    updated = fleets.update_driver(driver_id, changes) or driver
    audit.record(
        "driver_update",
        account_id=driver.account_id,
        target=f"driver:{driver_id}",
        content=body.model_dump_json(exclude_unset=True),
    )
    return DriverOut.model_validate(updated)


@router.post(
    "/v1/drivers/{driver_id}/assignments",
    response_model=AssignmentOut,
    status_code=201,
    summary="Assign a driver to a vehicle for a time range",
)
def create_assignment(
    driver_id: IdPath,
    body: AssignmentRequest,
    principal: Caller,
    fleets: Fleets,
    audit: CallerAudit,
    settings: Settings,
    context: Auth,
) -> AssignmentOut:
    """From `valid_from` (default: now) until `valid_until` (exclusive; open-ended
    without): trips and alerts starting then name the driver. A driver has at most 10,000
    assignments, the account's drivers together 1,000,000, by default (409
    `quota_exceeded` beyond)."""
    driver = _driver(fleets, principal, driver_id, manage=True)
    vin = vin_or_422(body.vin, ["body", "vin"])
    valid_from = body.valid_from if body.valid_from is not None else context.now_ms()
    if body.valid_until is not None and body.valid_until <= valid_from:
        raise invalid_request(
            ["body", "valid_until"], "valid_until must be after valid_from", "invalid_range"
        )
    try:
        assignment = fleets.assign(
            driver_id,
            vin,
            start_at=valid_from,
            end_at=body.valid_until,
            max_count=settings.fleet_quotas.assignments,
            max_account_count=settings.fleet_quotas.account_assignments,
        )
    except QuotaExceeded as exc:
        raise quota_exceeded(exc) from None
    except NotFound:
        raise ApiError(
            404, "vehicle_not_found", f"The driver's account has no vehicle {vin}."
        ) from None
    audit.record(
        "driver_assign",
        account_id=driver.account_id,
        target=f"driver:{driver_id}",
        detail={"vin": vin},
    )
    return AssignmentOut.model_validate(assignment)


@router.get(
    "/v1/drivers/{driver_id}/assignments",
    response_model=AssignmentPage,
    summary="A driver's assignments",
)
def list_assignments(
    driver_id: IdPath,
    principal: Caller,
    fleets: Fleets,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> AssignmentPage:
    """By id."""
    after = cursor_key("assignments", cursor, int)
    _driver(fleets, principal, driver_id)
    found = fleets.assignments(driver_id, after=after, limit=limit + 1)
    items, following = page_of(
        [AssignmentOut.model_validate(a) for a in found],
        limit=limit,
        kind="assignments",
        key=lambda a: [a.id],
    )
    return AssignmentPage(items=items, next=following)


@router.delete(
    "/v1/drivers/{driver_id}/assignments/{assignment_id}",
    status_code=204,
    summary="Remove an assignment",
)
def delete_assignment(
    driver_id: IdPath, assignment_id: IdPath, principal: Caller, fleets: Fleets, audit: CallerAudit
) -> None:
    """Trips and alerts already stored keep the driver they were given."""
    driver = _driver(fleets, principal, driver_id, manage=True)
    if not fleets.unassign(driver_id, assignment_id):
        raise ApiError(
            404, "assignment_not_found", f"Driver {driver_id} has no assignment {assignment_id}."
        )
    audit.record("driver_unassign", account_id=driver.account_id, target=f"driver:{driver_id}")
