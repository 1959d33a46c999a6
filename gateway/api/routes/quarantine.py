"""``GET /v1/quarantine``: the input the gateway refused, with the reason (tag
``quarantine``): everything for administrators; for a fleet manager or viewer, the entries
about the vehicles they see, in the holding period they see (what the gateway could not
tie to one vehicle's period stays the administrators')."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.deps import Auth, Caller, Reader
from gateway.api.errors import described
from gateway.api.models import QuarantineOut, QuarantinePage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.security import forbidden
from gateway.core.policy import Role
from schemas import Reason

__all__ = ["router"]

router = APIRouter(tags=["quarantine"])


@router.get(
    "/v1/quarantine",
    response_model=QuarantinePage,
    summary="Refused input",
    responses=described(403, 422, 503),
)
def get_quarantine(
    principal: Caller,
    reader: Reader,
    context: Auth,
    reason: Annotated[Reason | None, Query(description="Only this reason.")] = None,
    vin: Annotated[
        str | None,
        # not validated as a VIN: refused input is often about a malformed one
        Query(max_length=256, description="Only entries about this VIN, as received."),
    ] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> QuarantinePage:
    """Messages, samples and single signals the gateway refused, newest first, with the
    reason, a detail sentence and the raw payload (as text and base64; only its first
    bytes when it was large, with the whole payload's size and SHA-256).
    Administrators see everything; fleet managers and viewers the entries about their
    vehicles (in the holding period they see); others are refused (403)."""
    if not principal.is_admin and principal.role not in (Role.FLEET_MANAGER, Role.FLEET_VIEWER):
        raise forbidden(
            "The quarantine is read by administrators (all of it) and by fleet managers and "
            "fleet viewers (the entries of their organization's vehicles); owners and drivers "
            "have no access to it."
        )
    before = cursor_key("quarantine", cursor, int)
    rows = reader.quarantine(
        limit=limit + 1,
        reason=None if reason is None else reason.value,
        vin=vin,
        before_id=before,
        vins=context.visible_vins(principal),
    )
    items, following = page_of(
        [QuarantineOut.model_validate(q) for q in rows],
        limit=limit,
        kind="quarantine",
        key=lambda q: [q.id],
    )
    return QuarantinePage(items=items, next=following)
