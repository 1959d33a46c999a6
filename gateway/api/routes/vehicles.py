"""Vehicles, their latest state and their signal history (tag ``vehicles``).

The history route's ``limit`` is bounded by the app's settings and documented with those
bounds, so it is the one route built per app (:func:`history_router`); its work is the
module-level :func:`history`.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, Reader, Settings, Vin
from gateway.api.errors import ApiError, described, invalid_request
from gateway.api.models import (
    ErrorDetail,
    History,
    HistoryPointOut,
    Vehicle,
    VehicleDetail,
    VehiclePage,
)
from gateway.api.paging import (
    DEFAULT_PAGE,
    Cursor,
    Limit,
    cursor_key,
    decode_cursor,
    encode_cursor,
    page_of,
)
from gateway.api.params import TIME_FORMS, Timestamp, iso, now_ms, split_signals, unknown_signals
from gateway.api.security import AuthContext, readable_data, vehicle_not_found
from gateway.core.policy import Principal
from gateway.store import TelemetryReader, VehicleState, VehicleSummary

__all__ = ["history", "history_router", "router"]

#: history window when the request gives no start
DEFAULT_WINDOW_MS: Final = 60 * 60 * 1000

router = APIRouter(tags=["vehicles"])


def _known_vehicle(
    context: AuthContext, principal: Principal, reader: TelemetryReader, vin: str
) -> tuple[VehicleState | None, int]:
    """The vehicle's stored state in the holding period the caller reads (and that
    period), None if it is provisioned but never reported in it; 404 when the caller may
    not see it, or nobody provisioned it and it never reported; 403 when their grant does
    not include ``read``."""
    tenure, registration = readable_data(context, principal, vin)
    state = reader.vehicle_state(vin, tenure=tenure)
    if state is None and registration is None:
        raise vehicle_not_found(vin)
    return state, tenure


def _vehicle_page(
    context: AuthContext,
    principal: Principal,
    reader: TelemetryReader,
    after: str | None,
    limit: int,
    *,
    now_ms: int,
    silent_after_ms: int,
) -> list[Vehicle]:
    """Up to ``limit`` vehicles the caller sees with VINs after ``after``, in VIN order:
    those provisioned (whether or not they ever reported) and, for an administrator, also
    those the gateway heard from without a registration."""
    visible = context.visible_vins(principal)
    if visible is None:  # an administrator: the union of both databases, one page of each
        registered = context.accounts.registered_vins(after=after, limit=limit)
        # each VIN at the newest holding period the store has of it
        heard = reader.list_vehicles(limit=limit, after=after)
        vins = sorted({*registered, *(v.vin for v in heard)})[:limit]
    else:
        vins = sorted(v for v in visible if after is None or v > after)[:limit]
        # each at the holding period the caller reads: the current one
        heard = reader.list_vehicles(limit=limit, vins={v: visible[v] for v in vins})
    summaries: dict[str, VehicleSummary] = {v.vin: v for v in heard}
    return [
        Vehicle.from_summary(summaries[vin], now_ms=now_ms, silent_after_ms=silent_after_ms)
        if vin in summaries
        else Vehicle.never_reported(vin)
        for vin in vins
    ]


@router.get(
    "/v1/vehicles",
    response_model=VehiclePage,
    summary="List vehicles",
    responses=described(422, 503),
)
def list_vehicles(
    principal: Caller,
    reader: Reader,
    context: Auth,
    settings: Settings,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> VehiclePage:
    """Every vehicle you may see, ordered by VIN, with its online status and when it
    was first and last seen; a provisioned vehicle that never reported is listed with
    `reported: false` and null times."""
    after = cursor_key("vehicles", cursor, str)
    vehicles = _vehicle_page(
        context,
        principal,
        reader,
        after,
        limit + 1,
        now_ms=settings.clock_ms(),
        silent_after_ms=settings.silent_after_ms,
    )
    items, following = page_of(vehicles, limit=limit, kind="vehicles", key=lambda v: [v.vin])
    return VehiclePage(items=items, next=following)


@router.get(
    "/v1/vehicles/{vin}",
    response_model=VehicleDetail,
    summary="One vehicle and its latest state",
    responses=described(404, 422, 503),
)
def get_vehicle(
    principal: Caller, vin: Vin, reader: Reader, context: Auth, settings: Settings
) -> VehicleDetail:
    """The vehicle's summary plus `state`: the newest value of each signal it has
    reported (newest by sample time, so a late store-and-forward upload never hides a
    fresher value), with its sample time and unit. Only what it reported while its
    current holder held it."""
    state, _ = _known_vehicle(context, principal, reader, vin)
    now, silent = settings.clock_ms(), settings.silent_after_ms
    if state is None:
        return VehicleDetail.build(vin, {}, now_ms=now, silent_after_ms=silent)
    return VehicleDetail.build(state.summary, state.latest, now_ms=now, silent_after_ms=silent)


# --- history -------------------------------------------------------------------------------

Signals = Annotated[
    list[str],
    Query(
        description="VSS signal paths, repeated (`signals=a&signals=b`) or "
        "comma-separated (`signals=a,b`). See GET /v1/catalog.",
        examples=[["Vehicle.Speed", "Vehicle.CurrentLocation.Latitude"]],
    ),
]
Start = Annotated[
    Timestamp | None,
    Query(description=f"Inclusive; default: one hour before `end`. {TIME_FORMS}"),
]
End = Annotated[Timestamp | None, Query(description=f"Exclusive; default: now. {TIME_FORMS}")]


def _signal_names(signals: list[str]) -> list[str]:
    """The requested signal paths; 422 when there are none or one is not in the catalog."""
    names = split_signals(signals)
    if not names:
        raise invalid_request(
            ["query", "signals"], "give at least one signal path in 'signals'", "missing", signals
        )
    unknown = unknown_signals(names)
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise ApiError(
            422,
            "invalid_request",
            f"The request is invalid: unknown signal {listed}. Signals are VSS paths "
            "such as 'Vehicle.Speed' (case-sensitive); GET /v1/catalog lists all of them.",
            [
                ErrorDetail(
                    loc=["query", "signals"],
                    msg=f"{name!r} is not in the signal catalog (GET /v1/catalog)",
                    type="unknown_signal",
                    input=name,
                )
                for name in unknown
            ],
        )
    return names


def _window(start: int | None, end: int | None) -> tuple[int, int]:
    """``[start, end)`` with the defaults (the hour before now); 422 when empty."""
    end_ms = now_ms() if end is None else end
    start_ms = max(0, end_ms - DEFAULT_WINDOW_MS) if start is None else start
    if start_ms >= end_ms:
        raise invalid_request(
            ["query", "start"],
            f"start ({iso(start_ms)}) must be before end ({iso(end_ms)}); end defaults "
            "to now and start to one hour before end",
            "time_range",
            start_ms,
        )
    return start_ms, end_ms


def history(
    principal: Principal,
    vin: str,
    reader: TelemetryReader,
    context: AuthContext,
    signals: list[str],
    start: int | None,
    end: int | None,
    limit: int,
    cursor: str | None,
) -> History:
    """One page of ``GET /v1/vehicles/{vin}/history`` (see :func:`history_router`)."""
    after = decode_cursor("history", cursor, (int, int))
    _, tenure = _known_vehicle(context, principal, reader, vin)
    names = _signal_names(signals)
    start_ms, end_ms = _window(start, end)
    points = reader.history(
        vin,
        names,
        tenure=tenure,
        start=start_ms,
        end=end_ms,
        limit=limit + 1,
        after=(after[0], after[1]) if after is not None else None,
    )
    items, following = page_of(
        [HistoryPointOut.model_validate(p) for p in points],
        limit=limit,
        kind="history",
        key=lambda p: [p.ts, p.seq],
    )
    if following is None and points.resume is not None:
        # the store stopped at its scan bound (a signal the vehicle rarely sends): fewer
        # points, even none, and a cursor from where it stopped
        following = encode_cursor("history", list(points.resume))
    return History(
        vin=vin,
        signals=names,
        start=start_ms,
        start_iso=iso(start_ms),
        end=end_ms,
        end_iso=iso(end_ms),
        items=items,
        next=following,
    )


def history_router(max_limit: int, default_limit: int) -> APIRouter:
    """The history route with its ``limit`` bounded by ``max_limit`` (default
    ``default_limit``): FastAPI reads a parameter's bounds when the route is made, so the
    route is made per app."""
    history_router = APIRouter(tags=["vehicles"])

    @history_router.get(
        "/v1/vehicles/{vin}/history",
        response_model=History,
        summary="Signal history of one vehicle",
        responses=described(404, 422, 503),
    )
    def get_history(
        principal: Caller,
        vin: Vin,
        reader: Reader,
        context: Auth,
        signals: Signals,
        start: Start = None,
        end: End = None,
        limit: int = Query(
            default_limit,
            ge=1,
            le=max_limit,
            description="Most points on a page; `next` says if there are more.",
        ),
        cursor: Cursor = None,
    ) -> History:
        """Samples with `start <= ts < end` (sample time) that carry at least one of
        `signals`, oldest first; each point holds the requested signals it carries. Page
        on with `cursor` = `next` and the same `signals`, `start` and `end`; page on
        until `next` is null, not until a page is short: each request looks at no more
        than 20,000 of the vehicle's samples, so a rarely sent signal can give a short
        or empty page with a `next`. Only samples the vehicle reported while its current
        holder held it."""
        return history(principal, vin, reader, context, signals, start, end, limit, cursor)

    return history_router
