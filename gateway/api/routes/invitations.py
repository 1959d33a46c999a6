"""Invitations (tags ``provisioning`` and ``auth``): a vehicle's manager invites anyone,
by e-mail address, to share it; the recipient accepts (a grant) or declines.

The answer to an invitation is the same whether or not the address has an account, and
invitations are rate limited per user, so sharing cannot be used to find out who has an
account, nor to push a car into a stranger's view (decision 0009)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import APIRouter

from gateway.api.audit import AuditTrail
from gateway.api.deps import Auth, Caller, CallerAudit
from gateway.api.errors import ApiError
from gateway.api.models.accounts import (
    GrantOut,
    IdPath,
    InvitationAnswerRequest,
    InvitationCreated,
    InvitationOut,
    InvitationPage,
    InvitationRequest,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import ACCOUNT_ERRORS, id_page, managed_vehicle, stored_services
from gateway.api.security import AuthContext, too_many
from gateway.core.policy import Principal
from gateway.statedb.accounts import GrantRecord, InvitationRecord, normalize_email

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.post(
    "/v1/vehicles/{vin}/invitations",
    response_model=InvitationCreated,
    status_code=201,
    tags=["provisioning"],
    summary="Invite someone, by e-mail address, to share a vehicle",
)
def create_invitation(
    vin: str, body: InvitationRequest, principal: Caller, context: Auth, audit: CallerAudit
) -> InvitationOut:
    """Whoever logs in with `email` (now or after registering) can accept within 7 days
    (POST /v1/invitations/{id}/accept); only then is the vehicle shared with them, for
    `services`. The answer is the same whether the address has an account or not: it
    says nothing about who uses this installation. Limited per user (429 with
    Retry-After beyond 20 an hour, bursts of 10)."""
    vehicle = managed_vehicle(context, principal, vin)
    if context.invitations is not None:
        wait = context.invitations.acquire(f"user:{principal.user_id}")
        if wait > 0:
            audit.record(
                "invitation_create",
                outcome="denied",
                account_id=vehicle.account_id,
                target=f"vehicle:{vin}",
                detail={"reason": "rate limited"},
            )
            raise too_many("invitation_rate_limited", "You have sent too many invitations.", wait)
    services = stored_services(body.services)
    now = context.now_ms()
    token = secrets.token_urlsafe(32)
    invitation = context.accounts.create_invitation(
        accept_token_hash=_token_hash(token),
        vin=vin,
        email=body.email,
        services=services,
        invited_by=principal.user_id,
        now=now,
        expires_at=now + context.settings.invitation_ttl_s * 1000,
    )
    audit.record(
        "invitation_create",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        detail={"invitation_id": invitation.id, "services": services},
    )
    out = InvitationOut.model_validate(invitation, context={"now": now})
    return InvitationCreated(**out.model_dump(), accept_token=token)


@router.get(
    "/v1/vehicles/{vin}/invitations",
    response_model=InvitationPage,
    tags=["provisioning"],
    summary="A vehicle's invitations",
)
def list_vehicle_invitations(
    vin: str,
    principal: Caller,
    context: Auth,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> InvitationPage:
    """The invitations of the vehicle's current holding period, oldest first, with
    their status (pending, accepted, declined, withdrawn, expired); for those who
    manage the vehicle."""
    after = cursor_key("invitations", cursor, int)
    vehicle = managed_vehicle(context, principal, vin)
    now = context.now_ms()
    invitations = context.accounts.list_invitations(
        vin=vin, tenure=vehicle.tenure, after_id=after, limit=limit + 1
    )
    items, following = id_page(
        [InvitationOut.model_validate(i, context={"now": now}) for i in invitations],
        limit,
        "invitations",
    )
    return InvitationPage(items=items, next=following)


@router.delete(
    "/v1/vehicles/{vin}/invitations/{invitation_id}",
    response_model=InvitationOut,
    tags=["provisioning"],
    summary="Withdraw an invitation",
)
def withdraw_invitation(
    vin: str, invitation_id: IdPath, principal: Caller, context: Auth, audit: CallerAudit
) -> InvitationOut:
    """A pending invitation can no longer be accepted; an answered one is returned as
    it is (revoke the grant it made with DELETE /v1/vehicles/{vin}/grants/{id})."""
    vehicle = managed_vehicle(context, principal, vin)
    invitation = context.accounts.get_invitation(invitation_id)
    if invitation is None or invitation.vin != vin or invitation.tenure != vehicle.tenure:
        raise _invitation_not_found(invitation_id)
    now = context.now_ms()
    withdrawn = context.accounts.withdraw_invitation(invitation_id, now=now) or invitation
    audit.record(
        "invitation_withdraw",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        detail={"invitation_id": invitation_id},
    )
    return InvitationOut.model_validate(withdrawn, context={"now": now})


@router.get(
    "/v1/invitations",
    response_model=InvitationPage,
    tags=["auth"],
    summary="Invitations to you",
)
def my_invitations(
    principal: Caller, context: Auth, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> InvitationPage:
    """Vehicles offered to your e-mail address that you can still accept or decline
    (pending and not expired), oldest first."""
    after = cursor_key("my-invitations", cursor, int)
    now = context.now_ms()
    invitations = context.accounts.list_invitations(
        email=principal.email, status="pending", after_id=after, limit=limit + 1
    )
    offered = [InvitationOut.model_validate(i, context={"now": now}) for i in invitations]
    items, following = id_page(offered, limit, "my-invitations")
    return InvitationPage(items=[i for i in items if i.status == "pending"], next=following)


@router.post(
    "/v1/invitations/{invitation_id}/accept",
    response_model=GrantOut,
    status_code=201,
    tags=["auth"],
    summary="Accept an invitation: the vehicle is shared with you",
)
def accept_invitation(
    invitation_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    body: InvitationAnswerRequest | None = None,
) -> GrantOut:
    """Makes the grant the invitation offered (replacing one you had of the vehicle).
    409 `invitation_closed` if it was withdrawn, answered or has expired, or the vehicle
    changed hands since. An invitation made to an address that had no account then needs
    `{"token": ...}`, the `accept_token` its inviter was given (403
    `invitation_token_required`)."""
    token = None if body is None else body.token
    _invitation, grant = _answer(context, audit, principal, invitation_id, accept=True, token=token)
    assert grant is not None
    return GrantOut.model_validate(grant)


@router.post(
    "/v1/invitations/{invitation_id}/decline",
    response_model=InvitationOut,
    tags=["auth"],
    summary="Decline an invitation",
)
def decline_invitation(
    invitation_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    body: InvitationAnswerRequest | None = None,
) -> InvitationOut:
    """Nothing is shared; the inviter sees `declined`. Like accepting, an invitation made
    to an address that had no account then needs its token."""
    token = None if body is None else body.token
    invitation, _ = _answer(context, audit, principal, invitation_id, accept=False, token=token)
    return InvitationOut.model_validate(invitation, context={"now": context.now_ms()})


# --- helpers -------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _invitation_not_found(invitation_id: int) -> ApiError:
    return ApiError(
        404,
        "invitation_not_found",
        f"No invitation {invitation_id} is visible to you. GET /v1/invitations lists those "
        "to you; GET /v1/vehicles/{vin}/invitations those of a vehicle you manage.",
    )


def _answer(
    context: AuthContext,
    audit: AuditTrail,
    principal: Principal,
    invitation_id: int,
    *,
    accept: bool,
    token: str | None = None,
) -> tuple[InvitationRecord, GrantRecord | None]:
    """Accept or decline an invitation addressed to the caller (else 404): the user it
    is bound to, or, for one made to an address that had no account, whoever has the
    address now, who needs its token (decision 0023)."""
    invitation = context.accounts.get_invitation(invitation_id)
    if invitation is None:
        raise _invitation_not_found(invitation_id)
    if invitation.to_user_id is not None:
        addressed = invitation.to_user_id == principal.user_id
    else:
        addressed = invitation.email == normalize_email(principal.email)
    if not addressed:
        raise _invitation_not_found(invitation_id)
    if (
        invitation.to_user_id is None
        and invitation.accept_token_hash is not None
        and not (
            token is not None
            and hmac.compare_digest(_token_hash(token), invitation.accept_token_hash)
        )
    ):
        raise ApiError(
            403,
            "invitation_token_required",
            f"Invitation {invitation_id} was made to an address that had no account then: "
            'answer it with the token its sender was given (body {"token": ...}). Ask '
            "them for it, or to invite you again now that you have an account.",
        )
    # a closed invitation raises InvitationClosed: 409 invitation_closed (gateway.api.errors)
    answered, grant = context.accounts.answer_invitation(
        invitation_id, user_id=principal.user_id, accept=accept, now=context.now_ms()
    )
    vehicle = context.accounts.get_vehicle(invitation.vin)
    audit.record(
        "invitation_accept" if accept else "invitation_decline",
        account_id=vehicle.account_id if vehicle is not None else None,
        target=f"vehicle:{invitation.vin}",
        detail={
            "invitation_id": invitation_id,
            **({"grant_id": grant.id} if grant is not None else {}),
        },
    )
    return answered, grant
