"""Grants (tag ``provisioning``): a vehicle's manager shares it directly with a user of
the vehicle's own account, limited to some services; anyone else is invited instead
(``invitations.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.api.deps import Auth, Caller, CallerAudit
from gateway.api.errors import ApiError, invalid_request
from gateway.api.models.accounts import GrantOut, GrantPage, GrantRequest, IdPath
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import ACCOUNT_ERRORS, id_page, managed_vehicle, stored_services

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.post(
    "/v1/vehicles/{vin}/grants",
    response_model=GrantOut,
    status_code=201,
    tags=["provisioning"],
    summary="Share a vehicle with a user of its account, limited to some services",
)
def create_grant(
    vin: str, body: GrantRequest, principal: Caller, context: Auth, audit: CallerAudit
) -> GrantOut:
    """The grantee, a user of the vehicle's own account (an owner's driver, a fleet's
    driver), may do exactly `services`: `read` (state, history, the vehicle's commands)
    and the remote services listed. A new grant for the same user replaces the old one.
    To share with anyone else, invite them: POST /v1/vehicles/{vin}/invitations."""
    vehicle = managed_vehicle(context, principal, vin)
    if (body.email is None) == (body.user_id is None):
        raise invalid_request(["body", "email"], "give exactly one of email and user_id", "missing")
    grantee = (
        context.accounts.get_user_by_email(body.email)
        if body.email is not None
        else context.accounts.get_user(body.user_id or 0)
    )
    # a user of another account is answered exactly like one that does not exist
    if grantee is None or grantee.account_id != vehicle.account_id:
        raise ApiError(
            404,
            "user_not_found",
            f"The vehicle's account has no user {body.email or body.user_id}. To share "
            f"the vehicle with someone outside it, invite them: POST /v1/vehicles/{vin}/"
            "invitations.",
        )
    services = stored_services(body.services)
    grant = context.accounts.create_grant(
        vin=vin,
        user_id=grantee.id,
        services=services,
        granted_by=principal.user_id,
        now=context.now_ms(),
    )
    audit.record(
        "grant_create",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        detail={"grant_id": grant.id, "user_id": grantee.id, "services": services},
    )
    return GrantOut.model_validate(grant)


@router.get(
    "/v1/vehicles/{vin}/grants",
    response_model=GrantPage,
    tags=["provisioning"],
    summary="Who a vehicle is shared with",
)
def list_grants(
    vin: str,
    principal: Caller,
    context: Auth,
    include_revoked: bool = False,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> GrantPage:
    """The vehicle's active grants (and revoked ones with `include_revoked`) of its
    current holding period; for those who manage the vehicle."""
    after = cursor_key("grants", cursor, int)
    vehicle = managed_vehicle(context, principal, vin)
    grants = context.accounts.list_grants(
        vin=vin,
        tenure=vehicle.tenure,
        include_revoked=include_revoked,
        after_id=after,
        limit=limit + 1,
    )
    items, following = id_page([GrantOut.model_validate(g) for g in grants], limit, "grants")
    return GrantPage(items=items, next=following)


@router.delete(
    "/v1/vehicles/{vin}/grants/{grant_id}",
    response_model=GrantOut,
    tags=["provisioning"],
    summary="Stop sharing a vehicle with a user",
)
def revoke_grant(
    request: Request,
    vin: str,
    grant_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
) -> GrantOut:
    """The grantee loses access at once (their next request)."""
    vehicle = managed_vehicle(context, principal, vin)
    grant = context.accounts.get_grant(grant_id)
    if grant is None or grant.vin != vin or grant.tenure != vehicle.tenure:
        raise ApiError(
            404,
            "grant_not_found",
            f"Vehicle {vin} has no grant {grant_id}; GET /v1/vehicles/{vin}/grants lists them.",
        )
    revoked = context.accounts.revoke_grant(grant_id, now=context.now_ms()) or grant
    audit.record(
        "grant_revoke",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        detail={"grant_id": grant_id, "user_id": grant.user_id},
    )
    return GrantOut.model_validate(revoked)
