"""Alerts of the fleet rules (tag ``fleets``): list, acknowledge, clear.

An alert is opened, updated and closed by the rules worker (``gateway.fleet.worker``);
people acknowledge it (seen, the first acknowledgement stays) and clear it (it leaves the
open list; the rules raise the condition again only after it has cleared by itself).
Who sees an alert: whoever reads its vehicle's data (fleet readers of the account, the
owner, a driver granted ``read``); who acknowledges and clears it: whoever manages the
vehicle.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, CallerAudit, FleetLogDep, Fleets
from gateway.api.errors import ApiError
from gateway.api.models.accounts import IdPath
from gateway.api.models.fleet import AlertOut, AlertPage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.params import Timestamp, check_range
from gateway.api.routes.fleet_common import FLEET_ERRORS, NO_ACCOUNT, IdQuery, scope_of
from gateway.api.security import AuthContext, forbidden
from gateway.core.fleet.rules import AlertKind, Severity
from gateway.core.policy import Principal, can_manage_account, can_read_fleet_setup
from gateway.statedb.fleet_log import AlertFilter, AlertRecord, FleetLog

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)

VinQuery = Annotated[str | None, Query(min_length=17, max_length=17, description="One vehicle's.")]


@router.get("/v1/alerts", response_model=AlertPage, summary="List alerts")
def list_alerts(
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    vin: VinQuery = None,
    fleet_id: IdQuery = None,
    account_id: IdQuery = None,
    kind: AlertKind | None = None,
    state: Literal["open", "closed"] | None = Query(
        default=None, description="open: not ended and not cleared; closed: the others."
    ),
    severity: Severity | None = None,
    acknowledged: bool | None = Query(
        default=None,
        description="false: only alerts nobody has acknowledged yet (the work list); "
        "true: only acknowledged ones.",
    ),
    start: Annotated[Timestamp | None, Query(description="Started at or after.")] = None,
    end: Annotated[Timestamp | None, Query(description="Started before.")] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> AlertPage:
    """Newest first. Without `vin`, `fleet_id` or `account_id`: your account's (a driver:
    the vehicles granted to them)."""
    check_range(start, end)
    before = decode_cursor("alerts", cursor, (int, int))
    scope = scope_of(context, fleets, principal, vin=vin, fleet_id=fleet_id, account_id=account_id)
    f = AlertFilter(
        account_id=scope.account_id,
        vehicles=scope.vehicles,
        fleet_id=scope.fleet_id,
        kind=kind.value if kind is not None else None,
        open=None if state is None else state == "open",
        severity=severity.value if severity is not None else None,
        acknowledged=acknowledged,
        start=start,
        end=end,
    )
    found = [] if scope.account_id == NO_ACCOUNT else log.alerts(f, before=before, limit=limit + 1)
    items, following = page_of(
        [AlertOut.model_validate(a) for a in found],
        limit=limit,
        kind="alerts",
        key=lambda a: [a.start_at, a.id],
    )
    return AlertPage(items=items, next=following)


def _managed_alert(
    context: AuthContext, log: FleetLog, principal: Principal, alert_id: int
) -> AlertRecord:
    """The alert if the caller reads it (else 404) and may act on it (else 403): an alert of
    the caller's own account (also of a vehicle the account no longer holds: the account's
    list shows those) is for the account's managers; any other, for whoever reads the
    vehicle's data in the alert's holding period and manages the vehicle."""
    alert = log.get_alert(alert_id)
    missing = ApiError(404, "alert_not_found", f"No alert {alert_id} is visible to you.")
    if alert is None:
        raise missing
    if not principal.is_admin and can_read_fleet_setup(principal, alert.account_id):
        if not can_manage_account(principal, alert.account_id):
            raise forbidden(f"You can see alert {alert_id} but not acknowledge or clear it.")
        return alert
    access, vehicle = context.lookup(principal, alert.vin)
    current = vehicle.tenure if vehicle is not None else alert.tenure
    if not (access.read and access.read_data) or (
        current != alert.tenure and not principal.is_admin
    ):
        raise missing
    if not access.manage:
        raise forbidden(f"You can see alert {alert_id} but not acknowledge or clear it.")
    return alert


@router.post(
    "/v1/alerts/{alert_id}/acknowledge", response_model=AlertOut, summary="Acknowledge an alert"
)
def acknowledge_alert(
    alert_id: IdPath, principal: Caller, context: Auth, log: FleetLogDep, audit: CallerAudit
) -> AlertOut:
    """Marks it seen by you (the first acknowledgement stays); for whoever manages the vehicle."""
    alert = _managed_alert(context, log, principal, alert_id)
    done = log.acknowledge(alert_id, user_id=principal.user_id, now=context.now_ms()) or alert
    audit.record("alert_acknowledge", account_id=alert.account_id, target=f"alert:{alert_id}")
    return AlertOut.model_validate(done)


@router.post("/v1/alerts/{alert_id}/clear", response_model=AlertOut, summary="Clear an alert")
def clear_alert(
    alert_id: IdPath, principal: Caller, context: Auth, log: FleetLogDep, audit: CallerAudit
) -> AlertOut:
    """Takes it off the open list; the rule raises the condition again only after it has
    cleared by itself."""
    alert = _managed_alert(context, log, principal, alert_id)
    done = log.clear(alert_id, user_id=principal.user_id, now=context.now_ms()) or alert
    audit.record("alert_clear", account_id=alert.account_id, target=f"alert:{alert_id}")
    return AlertOut.model_validate(done)
