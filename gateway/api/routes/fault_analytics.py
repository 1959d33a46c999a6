"""Fault-code analytics across the installation (tag ``analytics``, issue 16 item 7;
docs/decisions/0026-lifecycle-owner-services.md): administrators (the maker's quality
engineering) see per model and trouble code how many vehicles reported it, how often and
since which day, and only groups of at least the minimum number of vehicles
(k-anonymity): no VIN, owner, account or position is ever in the answer.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from gateway.api.deps import Auth, Caller, Reader
from gateway.api.errors import ApiError
from gateway.api.params import Timestamp, iso
from gateway.api.routes.common import ACCOUNT_ERRORS
from gateway.api.security import require_admin
from gateway.core.fault_analytics import MIN_GROUP, fault_groups
from gateway.store.base import TelemetryReader
from gateway.text import for_spreadsheet
from schemas import EventType

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["analytics"])

_PAGE: Final = 10_000
_MAX_RANGE_DAYS: Final = 366
_DAY_MS: Final = 86_400_000
_COLUMNS: Final = ["model", "code", "vehicles", "occurrences", "first_day", "first_day_iso"]


class FaultGroupOut(BaseModel):
    model: str = Field(description="The VIN's first 8 characters: manufacturer and model line.")
    code: str
    vehicles: int
    occurrences: int
    first_day: int = Field(description="Start of the UTC day of the first occurrence.")
    first_day_iso: str


class FaultAnalyticsOut(BaseModel):
    start: int
    start_iso: str
    end: int
    end_iso: str
    min_group: int
    groups_suppressed: int = Field(description="Groups left out: fewer vehicles than min_group.")
    rows: list[FaultGroupOut]


def _occurrences(reader: TelemetryReader, start: int, end: int) -> Iterator[tuple[str, str, int]]:
    """Every fault code set in [start, end), from the event log (one pass, by id; streamed:
    only the groups are kept in memory)."""
    cursor = 0
    while True:
        page = reader.events_after(cursor, limit=_PAGE)
        for e in page:
            if e.type == EventType.DTC_SET and e.code and start <= e.ts < end:
                yield e.vin, e.code, e.ts
        if len(page) < _PAGE:
            return
        cursor = page[-1].id


@router.get(
    "/v1/analytics/fault-codes",
    response_model=FaultAnalyticsOut,
    responses={
        200: {
            "description": "JSON (`format=json`) or CSV with a header row (`format=csv`).",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        }
    },
    summary="Fault codes by model across the installation (aggregates only)",
)
def fault_code_analytics(
    response: Response,
    principal: Caller,
    context: Auth,
    reader: Reader,
    start: Annotated[
        Timestamp | None, Query(description="Inclusive; default: 30 days before end.")
    ] = None,
    end: Annotated[Timestamp | None, Query(description="Exclusive; default: now.")] = None,
    min_group: Annotated[
        int,
        Query(
            ge=MIN_GROUP,
            le=10_000,
            description=f"The fewest vehicles a reported group has (at least {MIN_GROUP}).",
        ),
    ] = MIN_GROUP,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
) -> Any:
    """Administrators. Per model and trouble code (the `dtc_set` events units sent in the
    range): the vehicles that reported it, how often, and the day it first occurred. A
    group with fewer than `min_group` vehicles is never reported (only how many were left
    out), and nothing names a vehicle or its owner."""
    require_admin(principal, "Fault-code analytics")
    end_ms = context.now_ms() if end is None else end
    start_ms = end_ms - 30 * _DAY_MS if start is None else start
    if not start_ms < end_ms <= start_ms + _MAX_RANGE_DAYS * _DAY_MS:
        raise ApiError(
            422,
            "invalid_range",
            f"start must be before end, at most {_MAX_RANGE_DAYS} days.",
        )
    cpu = time.process_time()
    result = fault_groups(_occurrences(reader, start_ms, end_ms), min_group=min_group)
    rows = [
        FaultGroupOut(
            model=g.model,
            code=g.code,
            vehicles=g.vehicles,
            occurrences=g.occurrences,
            first_day=g.first_day,
            first_day_iso=iso(g.first_day),
        )
        for g in result.groups
    ]
    headers = {"Server-Timing": f"cpu;dur={(time.process_time() - cpu) * 1000:.1f}"}
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(_COLUMNS)
        for r in rows:
            writer.writerow([for_spreadsheet(getattr(r, c)) for c in _COLUMNS])
        return Response(
            buffer.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={**headers, "Content-Disposition": 'attachment; filename="fault-codes.csv"'},
        )
    body = FaultAnalyticsOut(
        start=start_ms,
        start_iso=iso(start_ms),
        end=end_ms,
        end_iso=iso(end_ms),
        min_group=min_group,
        groups_suppressed=result.suppressed,
        rows=rows,
    )
    response.headers.update(headers)
    return body
