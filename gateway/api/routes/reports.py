"""Fleet reports (tag ``fleets``): per vehicle and per driver over a date range, daily rows
and totals, as JSON or CSV (streamed), computed from the stored trips and alerts
(``gateway.core.fleet.reports``). A range is at most :data:`MAX_RANGE_DAYS` days.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response, StreamingResponse

from gateway.api.deps import Auth, Caller, FleetLogDep, Fleets
from gateway.api.errors import invalid_request
from gateway.api.models.fleet import (
    FaultReportOut,
    FaultRow,
    ReportOut,
    ReportRow,
    UtilizationOut,
    UtilizationRow,
)
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
from gateway.core.fleet.reports import (
    DaySums,
    ReportTrip,
    faults_by_model,
    report_cells,
    utilization,
)
from gateway.core.policy import Principal
from gateway.statedb.fleet_log import AlertFilter, FleetLog, TripFilter
from gateway.statedb.fleets import FleetRepository
from gateway.text import for_spreadsheet

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


def _sums(
    log: FleetLog, scope: Scope, start: int, end: int, *, driver_id: int | None, by_driver: bool
) -> list[DaySums]:
    """The report's lines summed per key and day by the database in one query (the trips
    of whole days from the daily rollup), by key and day."""
    if scope.account_id == NO_ACCOUNT:
        return []
    tf = TripFilter(scope.account_id, scope.vehicles, scope.fleet_id, driver_id, start, end)
    af = AlertFilter(scope.account_id, scope.vehicles, scope.fleet_id, start=start, end=end)
    return [r for r in log.report_days(tf, af, by_driver=by_driver) if r[0] is not None]


def _names(
    fleets: FleetRepository,
    principal: Principal,
    scope: Scope,
    sums: list[DaySums],
    *,
    drivers: bool,
) -> dict[str, str]:
    """The report's keys' names, of the scope's account only; for single vehicles
    (``?vin=``, a driver's grants) only those of the caller's own account (an
    administrator: any), so a shared car's label stays its holder's."""
    if not sums or scope.account_id == NO_ACCOUNT:
        return {}
    account = scope.account_id
    if scope.vehicles is not None:
        account = None if principal.is_admin else principal.account_id
        if account is None and not principal.is_admin:
            return {}
    keys = {str(s[0]) for s in sums}
    return fleets.report_names(account, keys, drivers=drivers)


def _csv_of(columns: list[str], rows: Iterable[list[Any]]) -> Iterator[str]:
    """A header and ``rows`` as CSV (None as empty: the csv module's own rule), in chunks
    of about 64 KiB."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    rows = iter(rows)
    while batch := list(itertools.islice(rows, 500)):  # one call per 500 rows, not per row
        writer.writerows(batch)
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _download(chunks: Iterator[str], name: str) -> StreamingResponse:
    return StreamingResponse(
        chunks,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}-report.csv"'},
    )


def _named(
    cells: Iterator[list[Any]], names: dict[str, str], *, for_csv: bool = False
) -> Iterator[list[Any]]:
    """Each line with its key's name after the key (a report's second column); in a CSV
    cell no spreadsheet reads as a formula (a name is someone's input)."""
    for line in cells:
        name = names.get(line[0])
        line.insert(1, for_spreadsheet(name) if for_csv else name)
        yield line


def _answer(
    sums: list[DaySums], start: int, end: int, fmt: str, name: str, names: dict[str, str]
) -> Response:
    """The report as CSV (the lines put together while they are written: decision 0024) or
    JSON. The query ran before: an error is still an error response, not a cut stream."""
    if fmt == "csv":
        return _download(_csv_of(_COLUMNS, _named(report_cells(sums), names, for_csv=True)), name)
    # the lines are plain values already checked by their types: serialized directly
    # (validating 31,000 models per report took longer than the database's query), from
    # the same cells as the CSV (the rows have a day, the totals none)
    rows: list[dict[str, Any]] = []
    totals: list[dict[str, Any]] = []
    for cells in _named(report_cells(sums), names):
        (rows if cells[2] is not None else totals).append(dict(zip(_COLUMNS, cells, strict=True)))
    body = {
        "start": start,
        "start_iso": iso(start),
        "end": end,
        "end_iso": iso(end),
        "rows": rows,
        "totals": totals,
    }
    return Response(json.dumps(body, allow_nan=False), media_type="application/json")


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
    sums = _sums(log, scope, start_ms, end_ms, driver_id=None, by_driver=False)
    names = _names(fleets, principal, scope, sums, drivers=False)
    return _answer(sums, start_ms, end_ms, format, "vehicles", names)


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
    sums = _sums(log, scope, start_ms, end_ms, driver_id=driver_id, by_driver=True)
    names = _names(fleets, principal, scope, sums, drivers=True)
    return _answer(sums, start_ms, end_ms, format, "drivers", names)


_UTILIZATION_COLUMNS: Final = list(UtilizationRow.model_fields)
_FAULT_COLUMNS: Final = list(FaultRow.model_fields)


@router.get(
    "/v1/reports/utilization",
    response_model=UtilizationOut,
    responses=_CSV_OR_JSON,
    summary="Fleet utilization: days used, driving time and share, distance per vehicle",
)
def utilization_report(
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
    """Per vehicle of `vin`, `fleet_id`, `account_id` or your account (every vehicle held in
    the range, used or not) and for all of them: UTC days with a trip, trips, driving time,
    its share of the range, distance; from the stored trips. CSV: the vehicles, then the
    total (vin empty)."""
    start_ms, end_ms = _range(start, end, context.now_ms())
    scope = scope_of(context, fleets, principal, vin=vin, fleet_id=fleet_id, account_id=account_id)
    tf = TripFilter(scope.account_id, scope.vehicles, scope.fleet_id, None, start_ms, end_ms)
    if scope.account_id == NO_ACCOUNT:
        vehicles, sums = [], []
    else:
        vehicles = log.scope_vehicles(tf, start_ms, end_ms)
        sums = log.trip_days(tf, by_driver=False)
    trips = [
        ReportTrip(who, int(day) * _DAY_MS, int(duration or 0), float(distance or 0.0),
                   None, None, None, int(count))
        for who, day, count, duration, distance, *_ in sums
    ]  # fmt: skip
    lines, total = utilization(vehicles, trips, start_ms, end_ms)
    out = [UtilizationRow(vin=x.key, **_util_fields(x)) for x in [*lines, total]]
    if format == "csv":
        cells = ([getattr(r, c) for c in _UTILIZATION_COLUMNS] for r in out)
        return _download(_csv_of(_UTILIZATION_COLUMNS, cells), "utilization")
    return UtilizationOut(
        start=start_ms, start_iso=iso(start_ms), end=end_ms, end_iso=iso(end_ms),
        vehicles=out[:-1], total=out[-1],
    )  # fmt: skip


def _util_fields(x: Any) -> dict[str, Any]:
    return {c: getattr(x, c) for c in _UTILIZATION_COLUMNS if c != "vin"}


@router.get(
    "/v1/reports/faults",
    response_model=FaultReportOut,
    responses=_CSV_OR_JSON,
    summary="Fault codes by model: vehicles and occurrences per code",
)
def fault_report(
    principal: Caller,
    context: Auth,
    fleets: Fleets,
    log: FleetLogDep,
    fleet_id: IdQuery = None,
    account_id: IdQuery = None,
    start: Start = None,
    end: End = None,
    format: Format = "json",
) -> Any:
    """Per model (the VIN's first 8 characters: manufacturer and vehicle descriptor) and
    code, the vehicles that reported the code and the fault-code alerts raised for it,
    started in the range, of `fleet_id`, `account_id` or your account."""
    start_ms, end_ms = _range(start, end, context.now_ms())
    scope = scope_of(context, fleets, principal, vin=None, fleet_id=fleet_id, account_id=account_id)
    af = AlertFilter(scope.account_id, scope.vehicles, scope.fleet_id, start=start_ms, end=end_ms)
    found = [] if scope.account_id == NO_ACCOUNT else log.fault_counts(af)
    rows = [FaultRow.model_validate(x, from_attributes=True) for x in faults_by_model(found)]
    if format == "csv":
        cells = ([getattr(r, c) for c in _FAULT_COLUMNS] for r in rows)
        return _download(_csv_of(_FAULT_COLUMNS, cells), "faults")
    return FaultReportOut(
        start=start_ms, start_iso=iso(start_ms), end=end_ms, end_iso=iso(end_ms), rows=rows
    )
