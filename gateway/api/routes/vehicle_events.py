"""A vehicle's events (tag ``vehicles``): fault codes set and cleared, ignition on and off,
as the unit sent them and the store keeps them, in the order they were stored."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import Auth, Caller, Reader, Vin
from gateway.api.errors import described
from gateway.api.models.fleet import EventOut, EventPage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.params import iso
from gateway.api.security import readable_data

__all__ = ["router"]

router = APIRouter(tags=["vehicles"])


@router.get(
    "/v1/vehicles/{vin}/events",
    response_model=EventPage,
    summary="A vehicle's events",
    responses=described(403, 404, 422, 503),
)
def list_events(
    vin: Vin,
    principal: Caller,
    context: Auth,
    reader: Reader,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> EventPage:
    """Of the vehicle's current holding period, oldest stored first."""
    after = cursor_key("events", cursor, int) or 0
    tenure, _ = readable_data(context, principal, vin)
    rows = reader.events_after(after, limit=limit + 1, vin=vin, tenure=tenure)
    ids = {}
    items = []
    for e in rows:
        out = EventOut(
            seq=e.seq,
            ts=e.ts,
            ts_iso=iso(e.ts),
            received_at=e.received_at,
            received_at_iso=iso(e.received_at),
            type=e.type,
            code=e.code,
            detail=e.detail,
        )
        ids[id(out)] = e.id
        items.append(out)
    page, following = page_of(items, limit=limit, kind="events", key=lambda o: [ids[id(o)]])
    return EventPage(items=page, next=following)
