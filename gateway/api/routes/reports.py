"""Fleet reports (tag ``fleets``): per vehicle and per driver over a date range, daily rows
and totals, as JSON or CSV (streamed), computed from the stored trips and alerts
(``gateway.core.fleet.reports``). A range is at most :data:`MAX_RANGE_DAYS` days.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from gateway.api.deps import Auth, Caller, FleetLogDep, Fleets
from gateway.api.errors import invalid_request
from gateway.api.models.fleet import ReportOut, ReportRow
from gateway.api.params import Timestamp, iso
from gateway.api.routes.alerts import VinQuery
from gateway.api.routes.fleet_common import (
    FLEET_ERRORS,
    NO_ACCOUNT,
    IdQuery,
    Scope,
    owned,
    scope_of,
)
from gateway.core.fleet.reports import ReportAlert, ReportLine, ReportTrip, daily_report
from gateway.statedb.fleet_log import AlertFilter, FleetLog, TripFilter

__all__ = ["router"]

MAX_RANGE_DAYS: Final = 93
_DAY_MS: Final = 86_400_000
_COLUMNS: Final = list(ReportRow.model_fields)

router = APIRouter(tags=["fleets"], responses=FLEET_ERRORS)

_CSV_OR_JSON: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON (`format=json`) or CSV with a header row, daily rows then the "
        "totals (day empty) (`format=csv`).",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}

Start = Annotated[Timestamp | None, Query(description="Inclusive; default: one day before `end`.")]
End = Annotated[Timestamp | None, Query(description="Exclusive; default: now.")]
Format = Annotated[Literal["json", "csv"], Query(description="json or csv (streamed).")]


def _range(start: int | None, end: int | None, now: int) -> tuple[int, int]:
    end = now if end is None else end
    start = end - _DAY_MS if start is None else start
    if not start < end <= start + MAX_RANGE_DAYS * _DAY_MS:
        raise invalid_request(
            ["query", "start"],
            f"start must be before end, at most {MAX_RANGE_DAYS} days",
            "invalid_range",
        )
    return start, end


def _lines(
    log: FleetLog, scope: Scope, start: int, end: int, *, driver_id: int | None, by_driver: bool
) -> tuple[list[ReportLine], list[ReportLine]]:
    tf = TripFilter(scope.account_id, scope.vehicles, scope.fleet_id, driver_id, start, end)
    af = AlertFilter(scope.account_id, scope.vehicles, scope.fleet_id, start=start, end=end)
    trips = [
        ReportTrip(
            who,
            int(day) * _DAY_MS,
            int(duration or 0),
            float(distance or 0.0),
            top,
            energy,
            fuel,
            int(count),
        )
        for who, day, count, duration, distance, top, energy, fuel in (
            [] if scope.account_id == NO_ACCOUNT else log.trip_days(tf, by_driver=by_driver)
        )
    ]
    alerts = [
        ReportAlert(who, kind, at, end_at)
        for who, at, kind, end_at in (
            [] if scope.account_id == NO_ACCOUNT else log.alert_counts(af, by_driver=by_driver)
        )
        if who is not None and (driver_id is None or who == driver_id)
    ]
    return daily_report(trips, alerts)


def _csv(rows: list[ReportLine], totals: list[ReportLine]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(_COLUMNS)
    for line in [*rows, *totals]:
        writer.writerow(["" if getattr(line, c) is None else getattr(line, c) for c in _COLUMNS])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _answer(
    rows: list[ReportLine], totals: list[ReportLine], start: int, end: int, fmt: str, name: str
) -> ReportOut | StreamingResponse:
    if fmt == "csv":
        return StreamingResponse(
            _csv(rows, totals),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}-report.csv"'},
        )
    return ReportOut(
        start=start,
        start_iso=iso(start),
        end=end,
        end_iso=iso(end),
        rows=[ReportRow.model_validate(r, from_attributes=True) for r in rows],
        totals=[ReportRow.model_validate(t, from_attributes=True) for t in totals],
    )


@router.get(
    "/v1/reports/vehicles",
    response_model=ReportOut,
    responses=_CSV_OR_JSON,
    summary="Per-vehicle report: distance, driving and idle time, energy, fuel, alerts",
)
def vehicle_report(
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    vin: VinQuery = None,
    fleet_id: IdQuery = None,
    account_id: IdQuery = None,
    start: Start = None,
    end: End = None,
    format: Format = "json",
) -> Any:
    """Daily rows (UTC days) and totals per vehicle, of `vin`, `fleet_id`, `account_id` or
    your account (a driver: the vehicles granted to them)."""
    start_ms, end_ms = _range(start, end, context.now_ms())
    scope = scope_of(context, fleets, principal, vin=vin, fleet_id=fleet_id, account_id=account_id)
    rows, totals = _lines(log, scope, start_ms, end_ms, driver_id=None, by_driver=False)
    return _answer(rows, totals, start_ms, end_ms, format, "vehicles")


@router.get(
    "/v1/reports/drivers",
    response_model=ReportOut,
    responses=_CSV_OR_JSON,
    summary="Per-driver report: distance, driving and idle time, energy, fuel, alerts",
)
def driver_report(
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    driver_id: IdQuery = None,
    account_id: IdQuery = None,
    start: Start = None,
    end: End = None,
    format: Format = "json",
) -> Any:
    """Daily rows and totals per driver (the driver assigned at each trip's and alert's
    start), of `driver_id`, `account_id` or your account."""
    start_ms, end_ms = _range(start, end, context.now_ms())
    if driver_id is not None:
        account_id = owned(principal, fleets.get_driver(driver_id), "driver", driver_id).account_id
    scope = scope_of(context, fleets, principal, vin=None, fleet_id=None, account_id=account_id)
    if scope.vehicles is not None:  # a driver's own grants: no driver report
        scope = Scope(NO_ACCOUNT, None, None)
    rows, totals = _lines(log, scope, start_ms, end_ms, driver_id=driver_id, by_driver=True)
    return _answer(rows, totals, start_ms, end_ms, format, "drivers")
