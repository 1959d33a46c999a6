"""``GET /v1/audit``: the audit log (tag ``audit``). Administrators read all of it, a
fleet manager their organization's (:func:`gateway.core.policy.can_read_audit`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Caller
from gateway.api.models.accounts import AuditOut, AuditPage
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import ACCOUNT_ERRORS, account_not_found, id_page
from gateway.api.security import forbidden
from gateway.core.policy import can_read_audit

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    tags=["audit"],
    summary="The audit log (administrators; fleet managers: their organization's)",
)
def audit(
    principal: Caller,
    context: Auth,
    account_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this account's.")
    ] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    actor_user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> AuditPage:
    """Every command, login, grant, provisioning and administrative change: who, what,
    when, from which address; newest first."""
    before = cursor_key("audit", cursor, int)
    if not principal.is_admin:
        if not can_read_audit(principal, principal.account_id):
            raise forbidden("The audit log is for administrators and fleet managers.")
        if account_id is not None and not can_read_audit(principal, account_id):
            raise account_not_found(account_id)
        account_id = principal.account_id
    rows = context.audit.query(
        account_id=account_id,
        action=action,
        target=target,
        actor_user_id=actor_user_id,
        before_id=before,
        limit=limit + 1,
    )
    items, following = id_page([AuditOut.model_validate(r) for r in rows], limit, "audit")
    return AuditPage(items=items, next=following)
