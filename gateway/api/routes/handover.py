"""The rental handover report (tag ``grants``, issue 16 item 6;
docs/decisions/0026-lifecycle-owner-services.md): for a driver's grant (a rental, a shared
car), the car's state when the grant began (check-out) and when it ended or now
(check-in): odometer, charge, fuel, fault codes, position; the distance and energy used,
the fault codes that appeared, and the fleet alerts raised in between. JSON, CSV to file,
or a printable HTML page (no script; its stylesheet, with a print layout, is
``webui/handover.css`` under the dashboard's static route, as the page's
Content-Security-Policy allows no inline style). Every value on the page is HTML-escaped:
fault codes come from the car.
"""

from __future__ import annotations

import csv
import html
import io
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from gateway.api.deps import Auth, Caller, Reader, vin_or_422
from gateway.api.errors import ApiError
from gateway.api.models.accounts import IdPath
from gateway.api.params import iso, iso_or_none
from gateway.api.routes.common import ACCOUNT_ERRORS
from gateway.api.security import AuthContext, forbidden, vehicle_not_found
from gateway.core.handover import HANDOVER_SIGNALS, Snapshot, snapshot, state_at
from gateway.core.policy import READ_SERVICE, Principal
from gateway.statedb.accounts import GrantRecord, VehicleRecord
from gateway.statedb.fleet_log import AlertFilter
from gateway.store.base import TelemetryReader
from gateway.text import for_spreadsheet

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["grants"])

#: how far back the state at a moment is looked for: the newest window holding every
#: figure wins (a car reports what changed; a parked one may be quiet for weeks)
_LOOKBACK_MS: Final = (3_600_000, 86_400_000, 31 * 86_400_000)
_PAGE: Final = 5000
_MAX_PAGES: Final = 40
_MAX_ALERTS: Final = 1000
_CSV_COLUMNS: Final = [
    "record",
    "at",
    "at_iso",
    "odometer_m",
    "charge_pct",
    "fuel_pct",
    "fault_codes",
    "latitude",
    "longitude",
    "detail",
]
#: the page's stylesheet: gateway/api/webui/handover.css, under the dashboard's static route
#: (gateway.api.web)
_STYLESHEET: Final = "/web/static/handover.css"
#: the page's headers: no script, styles from this origin only (the stylesheet), no framing,
#: not cached (it is one person's car and position)
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class SnapshotOut(BaseModel):
    at: int
    at_iso: str
    as_of: int | None = Field(description="Time of the newest sample the figures come from.")
    as_of_iso: str | None
    odometer_m: float | None
    charge_pct: float | None
    fuel_pct: float | None
    fault_codes: list[str]
    latitude: float | None
    longitude: float | None

    @classmethod
    def of(cls, s: Snapshot) -> SnapshotOut:
        return cls(
            at=s.at,
            at_iso=iso(s.at),
            as_of=s.as_of,
            as_of_iso=iso_or_none(s.as_of),
            odometer_m=s.odometer_m,
            charge_pct=s.charge_pct,
            fuel_pct=s.fuel_pct,
            fault_codes=list(s.fault_codes),
            latitude=s.latitude,
            longitude=s.longitude,
        )


class HandoverAlert(BaseModel):
    kind: str
    severity: str
    start_at: int
    start_at_iso: str
    end_at: int | None
    end_at_iso: str | None


class HandoverChanges(BaseModel):
    distance_m: float | None
    charge_pct: float | None = Field(description="Check-in minus check-out.")
    fuel_pct: float | None = Field(description="Check-in minus check-out.")
    new_fault_codes: list[str]
    alerts: list[HandoverAlert]


class HandoverOut(BaseModel):
    vin: str
    grant_id: int
    user_id: int
    ongoing: bool = Field(description="The grant still runs: check-in is now.")
    check_out: SnapshotOut
    check_in: SnapshotOut
    changes: HandoverChanges


def _figures(reader: TelemetryReader, vin: str, tenure: int, at: int) -> Snapshot:
    """Each figure's last value at or before ``at``: the last hour first, then further back
    (1 day, 31 days) only for the figures still missing, each window below the previous, so
    a newer window's value always wins and an older window reads only samples that carry a
    missing figure (a figure reported every second is found in the first hour)."""
    found: dict[str, tuple[Any, int]] = {}
    upper = at + 1
    for back in _LOOKBACK_MS:
        missing = [s for s in HANDOVER_SIGNALS if s not in found]
        if not missing:
            break
        lower = at - back
        points: list[tuple[int, Any]] = []
        after = None
        for _ in range(_MAX_PAGES):
            page = reader.history(
                vin, missing, tenure=tenure, start=lower, end=upper, limit=_PAGE, after=after
            )
            points.extend((p.ts, p.values) for p in page)
            if page.resume is not None:  # the store's scan bound, not the window's end
                after = page.resume
                continue
            if len(page) < _PAGE:
                break
            after = (page[-1].ts, page[-1].seq)
        for name, value in state_at(points, at).items():
            found.setdefault(name, value)
        upper = lower
    return snapshot(found, at)


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


@router.get(
    "/v1/vehicles/{vin}/grants/{grant_id}/handover",
    response_model=HandoverOut,
    responses={
        200: {
            "description": "JSON (`format=json`), CSV (`format=csv`: a check_out and a "
            "check_in row, then one row per alert), or a printable HTML page "
            "(`format=html`).",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        }
    },
    summary="The handover report of a driver's grant (rental, shared car)",
)
def handover(
    request: Request,
    vin: str,
    grant_id: IdPath,
    principal: Caller,
    context: Auth,
    reader: Reader,
    format: Annotated[
        Literal["json", "csv", "html"], Query(description="json, csv or html (to print).")
    ] = "json",
) -> Any:
    """The vehicle's managers (owner, fleet managers, administrators) and the grant's
    driver, if the grant lets them read the car (its services list `read`; a grant for
    remote services only gives no state of the car, 403). Check-out is when the grant
    began, check-in when it was revoked (or now, while it runs); the figures are the last
    the car reported at or before each moment, in the current holding period.
    `format=html` is a page to print or save as PDF, with the same figures."""
    vin = vin_or_422(vin, ["path", "vin"])
    vehicle, grant = _readable_grant(context, principal, vin, grant_id)
    now = context.now_ms()
    end = now if grant.revoked_at is None else grant.revoked_at
    out = _figures(reader, vin, vehicle.tenure, grant.created_at)
    back = _figures(reader, vin, vehicle.tenure, end)
    alerts = request.app.state.fleet_log.alerts(
        AlertFilter(
            account_id=vehicle.account_id,
            vehicles=[(vin, vehicle.tenure)],
            start=grant.created_at,
            end=end + 1,
        ),
        before=None,
        limit=_MAX_ALERTS,
    )
    report = HandoverOut(
        vin=vin,
        grant_id=grant.id,
        user_id=grant.user_id,
        ongoing=grant.revoked_at is None,
        check_out=SnapshotOut.of(out),
        check_in=SnapshotOut.of(back),
        changes=HandoverChanges(
            distance_m=_delta(out.odometer_m, back.odometer_m),
            charge_pct=_delta(out.charge_pct, back.charge_pct),
            fuel_pct=_delta(out.fuel_pct, back.fuel_pct),
            new_fault_codes=sorted(set(back.fault_codes) - set(out.fault_codes)),
            alerts=[
                HandoverAlert(
                    kind=a.kind,
                    severity=a.severity,
                    start_at=a.start_at,
                    start_at_iso=iso(a.start_at),
                    end_at=a.end_at,
                    end_at_iso=iso_or_none(a.end_at),
                )
                for a in sorted(alerts, key=lambda a: (a.start_at, a.id))
            ],
        ),
    )
    if format == "csv":
        return Response(
            _csv(report),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="handover-{vin}-{grant.id}.csv"'
            },
        )
    if format == "html":
        return HTMLResponse(_html(report), headers=_PAGE_HEADERS)
    return report


def _readable_grant(
    context: AuthContext, principal: Principal, vin: str, grant_id: int
) -> tuple[VehicleRecord, GrantRecord]:
    """The vehicle and its grant if ``principal`` may read the grant's handover report
    (else 404 or 403, as the route says)."""
    access, vehicle = context.lookup(principal, vin)
    grant = context.accounts.get_grant(grant_id)
    mine = grant is not None and grant.user_id == principal.user_id
    if vehicle is None or not vehicle.active or not (access.read or mine):
        raise vehicle_not_found(vin)
    # security review 5: the report of a running grant is the car's state now (position,
    # odometer, fault codes), so the grant's holder needs the grant's `read` service, as for
    # every other read of the car's data
    if not (access.manage or (mine and grant is not None and READ_SERVICE in grant.services)):
        if mine:
            raise forbidden(
                f"Your grant of vehicle {vin} is for remote services only, not to read its "
                "state (the grant's services do not include 'read'), so it has no handover "
                "report for you; the vehicle's managers read it."
            )
        raise forbidden(
            f"You can see vehicle {vin} but not its handover reports: only its managers and "
            "the grant's driver can."
        )
    if grant is None or grant.vin != vin or grant.tenure != vehicle.tenure:
        raise ApiError(404, "grant_not_found", f"Vehicle {vin} has no grant {grant_id}.")
    return vehicle, grant


def _number(value: float | None) -> str:
    """A figure as the JSON has it (without a trailing ``.0``); a dash when unknown."""
    if value is None:
        return "\u2014"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _codes(codes: list[str]) -> str:
    return ", ".join(codes) if codes else "none"


def _html(report: HandoverOut) -> str:
    """The printable page: every value goes through ``html.escape`` (``data-field`` names the
    JSON field a cell shows)."""

    def cell(field: str, text: str) -> str:
        return f'<td data-field="{field}">{html.escape(text, quote=True)}</td>'

    out, back, changes = report.check_out, report.check_in, report.changes
    rows = [
        ("Time (UTC)", "at_iso", out.at_iso, back.at_iso, None),
        ("Figures as of (UTC)", "as_of_iso", out.as_of_iso or "\u2014",
         back.as_of_iso or "\u2014", None),
        ("Odometer (m)", "odometer_m", _number(out.odometer_m), _number(back.odometer_m),
         ("distance_m", _number(changes.distance_m))),
        ("Charge (%)", "charge_pct", _number(out.charge_pct), _number(back.charge_pct),
         ("charge_pct", _number(changes.charge_pct))),
        ("Fuel (%)", "fuel_pct", _number(out.fuel_pct), _number(back.fuel_pct),
         ("fuel_pct", _number(changes.fuel_pct))),
        ("Fault codes", "fault_codes", _codes(out.fault_codes), _codes(back.fault_codes),
         ("new_fault_codes", _codes(changes.new_fault_codes))),
        ("Latitude", "latitude", _number(out.latitude), _number(back.latitude), None),
        ("Longitude", "longitude", _number(out.longitude), _number(back.longitude), None),
    ]  # fmt: skip
    body = []
    for label, field, before, after, change in rows:
        changed = "<td></td>" if change is None else cell(f"changes.{change[0]}", change[1])
        body.append(
            f'<tr><th scope="row">{html.escape(label)}</th>'
            f"{cell(f'check_out.{field}', before)}{cell(f'check_in.{field}', after)}"
            f"{changed}</tr>"
        )
    if changes.alerts:
        alerts = "".join(
            "<tr>"
            + cell("changes.alerts.kind", a.kind)
            + cell("changes.alerts.severity", a.severity)
            + cell("changes.alerts.start_at_iso", a.start_at_iso)
            + cell("changes.alerts.end_at_iso", a.end_at_iso or "open")
            + "</tr>"
            for a in changes.alerts
        )
        alert_block = (
            '<table class="alerts"><thead><tr><th scope="col">Alert</th>'
            '<th scope="col">Severity</th><th scope="col">Started (UTC)</th>'
            f'<th scope="col">Ended (UTC)</th></tr></thead><tbody>{alerts}</tbody></table>'
        )
    else:
        alert_block = '<p class="none">No alerts.</p>'
    vin = html.escape(report.vin, quote=True)
    status = "ongoing: check-in is now" if report.ongoing else "returned"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Handover report {vin}, grant {report.grant_id}</title>"
        f'<link rel="stylesheet" href="{_STYLESHEET}"></head>'
        '<body><main class="handover"><h1>Handover report</h1><dl class="facts">'
        f'<dt>Vehicle (VIN)</dt><dd data-field="vin">{vin}</dd>'
        f'<dt>Grant</dt><dd data-field="grant_id">{report.grant_id}</dd>'
        f'<dt>Driver (user id)</dt><dd data-field="user_id">{report.user_id}</dd>'
        f'<dt>Status</dt><dd data-field="ongoing">{html.escape(status)}</dd></dl>'
        '<table class="states"><thead><tr><td></td><th scope="col">Check-out</th>'
        '<th scope="col">Check-in</th><th scope="col">Change</th></tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<h2>Alerts during the grant</h2>{alert_block}"
        '<p class="note">Each figure is the last the car reported at or before the moment, '
        "in its current holding period (a dash: none in the 31 days before).</p>"
        "</main></body></html>\n"
    )


def _csv(report: HandoverOut) -> str:
    """The CSV download; every text cell through :func:`for_spreadsheet` (the trouble codes
    are free text the unit chose: decision 0039)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(_CSV_COLUMNS)
    rows: list[list[Any]] = []
    for name, s in (("check_out", report.check_out), ("check_in", report.check_in)):
        rows.append(
            [
                name,
                s.at,
                s.at_iso,
                *("" if v is None else v for v in (s.odometer_m, s.charge_pct, s.fuel_pct)),
                " ".join(s.fault_codes),
                "" if s.latitude is None else s.latitude,
                "" if s.longitude is None else s.longitude,
                "",
            ]
        )
    for a in report.changes.alerts:
        rows.append(
            ["alert", a.start_at, a.start_at_iso, "", "", "", "", "", "", f"{a.kind} {a.severity}"]
        )
    writer.writerows([for_spreadsheet(cell) for cell in row] for row in rows)
    return buffer.getvalue()
