"""Ownership transfers (tag ``transfers``, issue 16): the holder offers a car to whoever logs
in with an e-mail address (a private owner to another, a fleet to a private buyer); the
receiver accepts or declines, the holder may cancel; both see it.

Accepting ends the holder's holding period (reason ``transferred``: its grants, pending
invitations and open commands end with it) and starts the receiver's with new credentials
for the unit, in one transaction: the holder keeps their period's data and sees nothing
after, the receiver starts empty (docs/decisions/0009, 0021).

Like invitations, an offer answers the same whether the address has an account or not: with
a one-time claim token the offerer passes on. An offer is bound to the user who had the
address when it was made; when nobody had it, it is accepted only with the token, so whoever
registers the address first does not get the car (decision 0023).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import APIRouter, Response

from gateway.api.deps import Auth, Caller, CallerAudit, vin_or_422
from gateway.api.errors import ApiError
from gateway.api.models.accounts import IdPath
from gateway.api.models.lifecycle import (
    TransferAccepted,
    TransferAcceptRequest,
    TransferDeclineRequest,
    TransferOffered,
    TransferOut,
    TransferPage,
    TransferRequest,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.common import (
    ACCOUNT_ERRORS,
    account_not_found,
    managed_vehicle,
    no_store,
    target_account,
)
from gateway.api.routes.lifecycle import Lifecycle, refused
from gateway.api.routes.provisioning import provisioned
from gateway.api.security import AuthContext, forbidden, too_many
from gateway.broker.auth import generate_password, hash_password
from gateway.core.policy import Principal, can_manage_account
from gateway.statedb.accounts import NotFound, normalize_email
from gateway.statedb.lifecycle import LifecycleRepository, TransferClosed, TransferRecord
from gateway.statedb.lifecycle_log import LifecycleRefused

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["transfers"])


def _out(context: AuthContext, record: TransferRecord) -> TransferOut:
    return TransferOut.model_validate(record, context={"now": context.now_ms()})


def _not_found(transfer_id: int) -> ApiError:
    return ApiError(
        404,
        "transfer_not_found",
        f"No transfer {transfer_id} is visible to you. GET /v1/transfers lists yours.",
    )


def _closed(exc: TransferClosed) -> ApiError:
    return ApiError(409, "transfer_closed", f"Transfer {exc.transfer_id} is {exc.why}.")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_token(record: TransferRecord, token: str | None) -> None:
    """403 ``claim_token_required`` unless the offer is bound to a user (checked by
    :func:`_sides`), was made before tokens (the address decides, as it did then), or
    ``token`` is its claim token."""
    if record.to_user_id is not None or record.claim_token_hash is None:
        return
    if token is not None and hmac.compare_digest(_token_hash(token), record.claim_token_hash):
        return
    raise ApiError(
        403,
        "claim_token_required",
        f"Transfer {record.id} was offered to an address that had no account then: answer "
        "it with the claim token its offerer was given (field claim_token). Ask the seller "
        "for it, or to offer the car again now that you have an account.",
    )


def _sides(principal: Principal, record: TransferRecord) -> tuple[bool, bool]:
    """(the caller manages the offering account, the caller is the receiver: the user the
    offer is bound to, or, for an offer to an address that had no account, whoever has it
    now)."""
    giver = can_manage_account(principal, record.from_account_id) and not principal.is_admin
    if record.to_user_id is not None:
        receiver = principal.user_id == record.to_user_id
    else:
        receiver = normalize_email(principal.email) == record.to_email
    return giver, receiver


def _visible(
    life: LifecycleRepository, principal: Principal, transfer_id: int
) -> tuple[TransferRecord, bool, bool]:
    record = life.get_transfer(transfer_id)
    if record is None:
        raise _not_found(transfer_id)
    giver, receiver = _sides(principal, record)
    if not (giver or receiver or principal.is_admin):
        raise _not_found(transfer_id)
    return record, giver, receiver


@router.post(
    "/v1/vehicles/{vin}/transfers",
    response_model=TransferOffered,
    status_code=201,
    summary="Offer a vehicle to a new holder (ownership transfer)",
)
def offer(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: TransferRequest,
) -> TransferOffered:
    """The holder's owner or fleet managers (administrators too). An earlier pending offer
    of the vehicle is withdrawn. A car in service is refused (409 `vehicle_in_service`).
    The answer's `claim_token` is shown once: give it to the buyer. An offer to an address
    with an account is bound to that user; to one without, it is accepted only with the
    token (whoever registers the address later must have it). Limited per user like
    invitations (`--invitation-limit`, 429 `transfer_rate_limited` with Retry-After)."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    if context.invitations is not None:
        wait = context.invitations.acquire(f"transfer:user:{principal.user_id}")
        if wait > 0:
            audit.record(
                "vehicle_transfer_offer",
                outcome="denied",
                account_id=vehicle.account_id,
                target=f"vehicle:{vehicle.vin}",
                detail={"reason": "rate limited"},
            )
            raise too_many("transfer_rate_limited", "You have offered too many transfers.", wait)
    now = context.now_ms()
    token = secrets.token_urlsafe(32)
    try:
        record = life.offer_transfer(
            vehicle.vin,
            to_email=body.to_email,
            note=body.note,
            by=principal.user_id,
            now=now,
            expires_at=now + body.expires_in_s * 1000,
            claim_token_hash=_token_hash(token),
        )
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record(
        "vehicle_transfer_offer",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"transfer_id": record.id, "tenure": record.tenure},
    )
    no_store(response)
    return TransferOffered(**_out(context, record).model_dump(), claim_token=token)


@router.get(
    "/v1/transfers",
    response_model=TransferPage,
    summary="Transfers you offered or were offered",
)
def list_transfers(
    principal: Caller,
    context: Auth,
    life: Lifecycle,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> TransferPage:
    """Newest first: those your account offered or received and those offered to your
    e-mail address; administrators see all."""
    managed = principal.account_id if can_manage_account(principal, principal.account_id) else None
    records = life.transfers_for(
        account_id=managed,
        email=principal.email,
        user_id=principal.user_id,
        every=principal.is_admin,
        before_id=cursor_key("transfers", cursor, int),
        limit=limit + 1,
    )
    items, following = page_of(
        [_out(context, r) for r in records], limit=limit, kind="transfers", key=lambda t: [t.id]
    )
    return TransferPage(items=items, next=following)


@router.get(
    "/v1/transfers/{transfer_id}",
    response_model=TransferOut,
    summary="One transfer",
)
def get_transfer(
    transfer_id: IdPath, principal: Caller, context: Auth, life: Lifecycle
) -> TransferOut:
    """One transfer the caller gives or receives (administrators: any); 404 for anyone
    else."""
    record, _, _ = _visible(life, principal, transfer_id)
    return _out(context, record)


@router.post(
    "/v1/transfers/{transfer_id}/accept",
    response_model=TransferAccepted,
    summary="Accept a transfer: the car is yours, with new credentials for its unit",
)
def accept(
    response: Response,
    transfer_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: TransferAcceptRequest,
) -> TransferAccepted:
    """The receiver (the user with the offer's e-mail address), into an account they
    manage (an owner's or a fleet manager's). An offer made to an address that had no
    account then needs `claim_token`, the token its offerer was given (403
    `claim_token_required` without it or with another)."""
    no_store(response)
    record, _, receiver = _visible(life, principal, transfer_id)
    if not receiver:
        raise forbidden("Only the receiver accepts a transfer.")
    _check_token(record, body.claim_token)
    account_id = target_account(principal, body.account_id, "the vehicle")
    if not can_manage_account(principal, account_id):
        if principal.account_id == account_id:
            raise forbidden("Only owners and fleet managers take over vehicles.")
        raise account_not_found(account_id)
    secret = generate_password() if body.credentials == "password" else None
    try:
        done, vehicle = life.accept_transfer(
            transfer_id,
            account_id=account_id,
            label=body.label,
            mqtt_password_hash=None if secret is None else hash_password(secret),
            by=principal.user_id,
            now=context.now_ms(),
        )
    except NotFound:
        raise account_not_found(account_id) from None
    except TransferClosed as exc:
        raise _closed(exc) from None
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record(
        "vehicle_transfer_accept",
        account_id=account_id,
        target=f"vehicle:{record.vin}",
        detail={
            "transfer_id": transfer_id,
            "from_account_id": record.from_account_id,
            "tenure": vehicle.tenure,
        },
    )
    return TransferAccepted(
        transfer=_out(context, done), vehicle=provisioned(context, vehicle, secret)
    )


@router.post(
    "/v1/transfers/{transfer_id}/decline",
    response_model=TransferOut,
    summary="Decline a transfer offered to you",
)
def decline(
    transfer_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: TransferDeclineRequest | None = None,
) -> TransferOut:
    """The receiver turns the offer down; the vehicle stays with its holder. Like
    accepting, an offer made to an address that had no account then needs its
    `claim_token`."""
    record, _, receiver = _visible(life, principal, transfer_id)
    if not receiver:
        raise forbidden("Only the receiver declines a transfer; its holder cancels it.")
    _check_token(record, None if body is None else body.claim_token)
    return _close(context, audit, life, principal, record, "declined")


@router.post(
    "/v1/transfers/{transfer_id}/cancel",
    response_model=TransferOut,
    summary="Cancel a transfer you offered",
)
def cancel(
    transfer_id: IdPath, principal: Caller, context: Auth, audit: CallerAudit, life: Lifecycle
) -> TransferOut:
    """The holder (or an administrator) withdraws an open offer."""
    record, giver, _ = _visible(life, principal, transfer_id)
    if not (giver or principal.is_admin):
        raise forbidden("Only the holder cancels a transfer; its receiver declines it.")
    return _close(context, audit, life, principal, record, "cancelled")


def _close(
    context: AuthContext,
    audit: CallerAudit,
    life: LifecycleRepository,
    principal: Principal,
    record: TransferRecord,
    status: str,
) -> TransferOut:
    try:
        done = life.close_transfer(
            record.id,
            status="declined" if status == "declined" else "cancelled",
            by=principal.user_id,
            now=context.now_ms(),
        )
    except TransferClosed as exc:
        raise _closed(exc) from None
    audit.record(
        f"vehicle_transfer_{'decline' if status == 'declined' else 'cancel'}",
        account_id=record.from_account_id,
        target=f"vehicle:{record.vin}",
        detail={"transfer_id": record.id},
    )
    return _out(context, done)
