"""Fleets and groups, their vehicles, and an account's rule settings (tag ``fleets``).

A fleet or group belongs to one account and holds vehicles of that account; a vehicle may
be in several. A fleet's speed limit feeds the overspeed rule. The rule settings are the
account's thresholds over the defaults of decision 0014, checked against the core's
setting names when stored (an unknown name is a 422, not a silently kept default).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import Auth, Caller, CallerAudit, Fleets, Settings, Vin
from gateway.api.errors import ApiError, invalid_request
from gateway.api.models.accounts import IdPath
from gateway.api.models.fleet import (
    FleetOut,
    FleetPage,
    FleetRequest,
    FleetUpdate,
    FleetVehicle,
    FleetVehiclePage,
    RuleSettingsIn,
    RuleSettingsOut,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.common import account_not_found
from gateway.api.routes.fleet_common import (
    FLEET_ERRORS,
    NO_ACCOUNT,
    IdQuery,
    check_account,
    list_account,
    owned,
    quota_exceeded,
)
from gateway.core.fleet.state import (
    rule_settings_from_json,
    settings_to_json,
    trip_settings_from_json,
)
from gateway.core.policy import Principal, can_read_fleet_setup
from gateway.statedb.accounts import NotFound
from gateway.statedb.fleets import (
    DuplicateFleetName,
    FleetRecord,
    FleetRepository,
    QuotaExceeded,
)

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)


def _duplicate(exc: DuplicateFleetName) -> ApiError:
    return ApiError(409, "fleet_name_taken", f"{exc}; choose another name.")


def _fleet(
    fleets: FleetRepository, principal: Principal, fleet_id: int, *, manage: bool = False
) -> FleetRecord:
    return owned(principal, fleets.get_fleet(fleet_id), "fleet", fleet_id, manage=manage)


@router.post(
    "/v1/fleets", response_model=FleetOut, status_code=201, summary="Create a fleet or group"
)
def create_fleet(
    body: FleetRequest,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
    settings: Settings,
) -> FleetOut:
    """For the account's fleet managers (and a private account's owner); an account has at
    most 500 fleets and groups by default (409 `quota_exceeded` beyond)."""
    account_id = check_account(principal, body.account_id, manage=True)
    try:
        fleet = fleets.create_fleet(
            account_id=account_id,
            name=body.name,
            kind=body.kind,
            speed_limit_kmh=body.speed_limit_kmh,
            now=context.now_ms(),
            max_count=settings.fleet_quotas.fleets,
        )
    except DuplicateFleetName as exc:
        raise _duplicate(exc) from None
    except QuotaExceeded as exc:
        raise quota_exceeded(exc) from None
    audit.record("fleet_create", account_id=account_id, target=f"fleet:{fleet.id}")
    return FleetOut.model_validate(fleet)


@router.get("/v1/fleets", response_model=FleetPage, summary="List fleets and groups")
def list_fleets(
    principal: Caller,
    fleets: Fleets,
    account_id: IdQuery = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> FleetPage:
    """Your account's fleets and groups (an administrator: every account's, or
    `account_id`'s)."""
    after = cursor_key("fleets", cursor, int)
    scope = list_account(principal, account_id)
    found = (
        []
        if scope == NO_ACCOUNT
        else fleets.list_fleets(account_id=scope, after=after, limit=limit + 1)
    )
    items, following = page_of(
        [FleetOut.model_validate(f) for f in found],
        limit=limit,
        kind="fleets",
        key=lambda f: [f.id],
    )
    return FleetPage(items=items, next=following)


@router.get("/v1/fleets/{fleet_id}", response_model=FleetOut, summary="One fleet or group")
def get_fleet(fleet_id: IdPath, principal: Caller, fleets: Fleets) -> FleetOut:
    """With its number of vehicles; for the account's fleet readers."""
    return FleetOut.model_validate(_fleet(fleets, principal, fleet_id))


@router.patch(
    "/v1/fleets/{fleet_id}",
    response_model=FleetOut,
    summary="Rename a fleet or change its speed limit",
)
def update_fleet(
    fleet_id: IdPath, body: FleetUpdate, principal: Caller, fleets: Fleets, audit: CallerAudit
) -> FleetOut:
    """Only the fields given change; for the account's fleet managers."""
    fleet = _fleet(fleets, principal, fleet_id, manage=True)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        raise invalid_request(["body", "name"], "a fleet keeps a name", "missing")
    try:
        updated = fleets.update_fleet(fleet_id, changes) or fleet
    except DuplicateFleetName as exc:
        raise _duplicate(exc) from None
    audit.record(
        "fleet_update", account_id=fleet.account_id, target=f"fleet:{fleet_id}", detail=changes
    )
    return FleetOut.model_validate(fleets.get_fleet(fleet_id) or updated)


@router.delete("/v1/fleets/{fleet_id}", status_code=204, summary="Delete a fleet or group")
def delete_fleet(fleet_id: IdPath, principal: Caller, fleets: Fleets, audit: CallerAudit) -> None:
    """Its vehicles stay (in the account and their other fleets)."""
    fleet = _fleet(fleets, principal, fleet_id, manage=True)
    fleets.delete_fleet(fleet_id)
    audit.record("fleet_delete", account_id=fleet.account_id, target=f"fleet:{fleet_id}")


@router.get(
    "/v1/fleets/{fleet_id}/vehicles", response_model=FleetVehiclePage, summary="A fleet's vehicles"
)
def list_fleet_vehicles(
    fleet_id: IdPath,
    principal: Caller,
    fleets: Fleets,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> FleetVehiclePage:
    """By VIN."""
    after = cursor_key("fleet_vehicles", cursor, str)
    _fleet(fleets, principal, fleet_id)
    vins = fleets.fleet_vins(fleet_id, after=after, limit=limit + 1)
    items, following = page_of(
        [FleetVehicle(vin=v) for v in vins],
        limit=limit,
        kind="fleet_vehicles",
        key=lambda v: [v.vin],
    )
    return FleetVehiclePage(items=items, next=following)


@router.put(
    "/v1/fleets/{fleet_id}/vehicles/{vin}",
    status_code=204,
    summary="Add a vehicle to a fleet or group",
)
def add_fleet_vehicle(
    fleet_id: IdPath, vin: Vin, principal: Caller, context: Auth, fleets: Fleets, audit: CallerAudit
) -> None:
    """The vehicle must be of the fleet's account; adding it again changes nothing."""
    fleet = _fleet(fleets, principal, fleet_id, manage=True)
    try:
        added = fleets.add_vehicle(fleet_id, vin, now=context.now_ms())
    except NotFound:
        raise ApiError(
            404, "vehicle_not_found", f"The fleet's account has no vehicle {vin}."
        ) from None
    if added:
        audit.record(
            "fleet_vehicle_add",
            account_id=fleet.account_id,
            target=f"fleet:{fleet_id}",
            detail={"vin": vin},
        )


@router.delete(
    "/v1/fleets/{fleet_id}/vehicles/{vin}",
    status_code=204,
    summary="Remove a vehicle from a fleet or group",
)
def remove_fleet_vehicle(
    fleet_id: IdPath, vin: Vin, principal: Caller, fleets: Fleets, audit: CallerAudit
) -> None:
    """The vehicle stays in its account and its other fleets."""
    fleet = _fleet(fleets, principal, fleet_id, manage=True)
    if not fleets.remove_vehicle(fleet_id, vin):
        raise ApiError(404, "vehicle_not_found", f"Vehicle {vin} is not in fleet {fleet_id}.")
    audit.record(
        "fleet_vehicle_remove",
        account_id=fleet.account_id,
        target=f"fleet:{fleet_id}",
        detail={"vin": vin},
    )


@router.get(
    "/v1/accounts/{account_id}/rule-settings",
    response_model=RuleSettingsOut,
    summary="An account's fleet rule and trip thresholds",
)
def get_rule_settings(account_id: IdPath, principal: Caller, fleets: Fleets) -> RuleSettingsOut:
    """What the account changed from the defaults (decision 0014); empty: all defaults."""
    if not can_read_fleet_setup(principal, account_id):
        raise account_not_found(account_id)
    stored = fleets.rule_settings(account_id)
    return _rule_settings_out(account_id, stored.get("rules", {}), stored.get("trips", {}))


def _rule_settings_out(
    account_id: int, rules: dict[str, Any], trips: dict[str, Any]
) -> RuleSettingsOut:
    """The overrides and what is in effect with them (stored overrides were checked when
    they were set)."""
    return RuleSettingsOut(
        account_id=account_id,
        rules=rules,
        trips=trips,
        effective_rules=settings_to_json(rule_settings_from_json(rules)),
        effective_trips=settings_to_json(trip_settings_from_json(trips)),
    )


@router.put(
    "/v1/accounts/{account_id}/rule-settings",
    response_model=RuleSettingsOut,
    summary="Set an account's fleet rule and trip thresholds",
)
def put_rule_settings(
    account_id: IdPath,
    body: RuleSettingsIn,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    audit: CallerAudit,
) -> RuleSettingsOut:
    """Replaces the stored overrides; the rules worker applies them within seconds."""
    check_account(principal, account_id, manage=True)
    if context.accounts.get_account(account_id) is None:
        raise account_not_found(account_id)
    try:
        rule_settings_from_json(body.rules)
        trip_settings_from_json(body.trips)
    except (TypeError, ValueError) as exc:
        raise invalid_request(["body"], str(exc), "invalid_setting") from None
    fleets.set_rule_settings(
        account_id, {"rules": body.rules, "trips": body.trips}, now=context.now_ms()
    )
    audit.record(
        "rule_settings_set",
        account_id=account_id,
        target=f"account:{account_id}",
        content=body.model_dump_json(),
    )
    return _rule_settings_out(account_id, body.rules, body.trips)
