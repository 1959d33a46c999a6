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
from gateway.api.limits import body_limit
from gateway.api.models.accounts import IdPath
from gateway.api.models.fleet import (
    MAX_BULK_ACKNOWLEDGE,
    AlertAcknowledgeOut,
    AlertAcknowledgeRequest,
    AlertOut,
    AlertPage,
    AlertSelection,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.params import Timestamp, check_range
from gateway.api.routes.fleet_common import FLEET_ERRORS, NO_ACCOUNT, IdQuery, scope_of
from gateway.api.security import AuthContext, forbidden
from gateway.core.fleet.rules import AlertKind, Severity
from gateway.core.policy import (
    Principal,
    VehicleAccess,
    can_manage_account,
    can_read_fleet_setup,
)
from gateway.statedb.accounts import VehicleRecord
from gateway.statedb.fleet_log import AlertFilter, AlertRecord, FleetLog
from gateway.statedb.fleets import FleetRepository

__all__ = ["router"]

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)

#: 1,000 ids of up to 16 digits, with separators
BULK_BODY_BYTES = 32 * 1024

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
    """The alert if the caller reads it (else 404) and may act on it (else 403)."""
    alert = log.get_alert(alert_id)
    if alert is None:
        raise _missing(alert_id)
    _may_manage(context, principal, alert, {})
    return alert


def _missing(alert_id: int) -> ApiError:
    return ApiError(404, "alert_not_found", f"No alert {alert_id} is visible to you.")


def _may_manage(
    context: AuthContext,
    principal: Principal,
    alert: AlertRecord,
    looked_up: dict[str, tuple[VehicleAccess, VehicleRecord | None]],
) -> None:
    """404 unless the caller reads ``alert``, 403 unless they may act on it: an alert of
    the caller's own account (also of a vehicle the account no longer holds: the account's
    list shows those) is for the account's managers; any other, for whoever reads the
    vehicle's data in the alert's holding period and manages the vehicle. ``looked_up``
    keeps each vehicle's lookup for the next alert of a bulk request."""
    alert_id = alert.id
    if not principal.is_admin and can_read_fleet_setup(principal, alert.account_id):
        if not can_manage_account(principal, alert.account_id):
            raise forbidden(f"You can see alert {alert_id} but not acknowledge or clear it.")
        return
    if alert.vin not in looked_up:
        looked_up[alert.vin] = context.lookup(principal, alert.vin)
    access, vehicle = looked_up[alert.vin]
    current = vehicle.tenure if vehicle is not None else alert.tenure
    if not (access.read and access.read_data) or (
        current != alert.tenure and not principal.is_admin
    ):
        raise _missing(alert_id)
    if not access.manage:
        raise forbidden(f"You can see alert {alert_id} but not acknowledge or clear it.")


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


@router.post(
    "/v1/alerts/acknowledge",
    response_model=AlertAcknowledgeOut,
    summary="Acknowledge many alerts",
    openapi_extra=body_limit(BULK_BODY_BYTES),
)
def acknowledge_alerts(
    body: AlertAcknowledgeRequest,
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    audit: CallerAudit,
) -> AlertAcknowledgeOut:
    """`ids`, or a `filter` (the filters of `GET /v1/alerts`): every alert must be one you
    may acknowledge (else nothing is acknowledged: 404 naming the first you cannot see,
    403 the first you see but may not act on), as for one alert. One audit entry per
    request; each alert newly acknowledged publishes `alert.acknowledged`."""
    more = False
    if body.ids is not None:
        ids = list(dict.fromkeys(body.ids))
        found = {a.id: a for a in log.get_alerts(ids)}
        for alert_id in ids:
            if alert_id not in found:
                raise _missing(alert_id)
        alerts = [found[i] for i in ids]
    else:
        alerts = _selected(context, fleets, log, principal, body.filter)
        more = len(alerts) > MAX_BULK_ACKNOWLEDGE
        alerts = alerts[:MAX_BULK_ACKNOWLEDGE]
    foreign = [
        a.vin
        for a in alerts
        if principal.is_admin or not can_read_fleet_setup(principal, a.account_id)
    ]
    looked_up = context.lookup_many(principal, list(dict.fromkeys(foreign))) if foreign else {}
    for alert in alerts:
        _may_manage(context, principal, alert, looked_up)
    todo = [a.id for a in alerts if a.acknowledged_at is None]
    done = log.acknowledge_many(todo, user_id=principal.user_id, now=context.now_ms())
    accounts = {a.account_id for a in alerts}
    audit.record(
        "alert_acknowledge_many",
        account_id=next(iter(accounts)) if len(accounts) == 1 else None,
        target=f"alerts:{len(done)}",
        detail={"by": "ids" if body.ids is not None else "filter", "first_ids": done[:20]},
    )
    newly = set(done)
    return AlertAcknowledgeOut(
        acknowledged=done,
        already_acknowledged=[a.id for a in alerts if a.id not in newly],
        more=more,
    )


def _selected(
    context: AuthContext,
    fleets: FleetRepository,
    log: FleetLog,
    principal: Principal,
    selection: AlertSelection | None,
) -> list[AlertRecord]:
    """The unacknowledged alerts ``selection`` picks (one more than the bound: whether
    others remain)."""
    assert selection is not None
    sel = selection
    check_range(sel.start, sel.end, where="body")
    scope = scope_of(
        context, fleets, principal, vin=sel.vin, fleet_id=sel.fleet_id, account_id=sel.account_id
    )
    if scope.account_id == NO_ACCOUNT:
        return []
    f = AlertFilter(
        account_id=scope.account_id,
        vehicles=scope.vehicles,
        fleet_id=scope.fleet_id,
        kind=sel.kind.value if sel.kind is not None else None,
        open=None if sel.state is None else sel.state == "open",
        severity=sel.severity.value if sel.severity is not None else None,
        acknowledged=False,
        start=sel.start,
        end=sel.end,
    )
    return log.alerts(f, before=None, limit=MAX_BULK_ACKNOWLEDGE + 1)


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
