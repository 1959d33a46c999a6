"""Ownership transfers (tag ``transfers``, issue 16): the holder offers a car to whoever logs
in with an e-mail address (a private owner to another, a fleet to a private buyer); the
receiver accepts or declines, the holder may cancel; both see it.

Accepting ends the holder's holding period (reason ``transferred``: its grants, pending
invitations and open commands end with it) and starts the receiver's with new credentials
for the unit, in one transaction: the holder keeps their period's data and sees nothing
after, the receiver starts empty (docs/decisions/0009, 0021).

Like invitations, an offer answers the same whether the address has an account or not.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import Auth, Caller, CallerAudit, vin_or_422
from gateway.api.errors import ApiError
from gateway.api.models.accounts import IdPath
from gateway.api.models.lifecycle import (
    TransferAccepted,
    TransferAcceptRequest,
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
from gateway.api.security import AuthContext, forbidden
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


def _sides(principal: Principal, record: TransferRecord) -> tuple[bool, bool]:
    """(the caller manages the offering account, the caller is the receiver)."""
    giver = can_manage_account(principal, record.from_account_id) and not principal.is_admin
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
    response_model=TransferOut,
    status_code=201,
    summary="Offer a vehicle to a new holder (ownership transfer)",
)
def offer(
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: TransferRequest,
) -> TransferOut:
    """The holder's owner or fleet managers (administrators too). An earlier pending offer
    of the vehicle is withdrawn. A car in service is refused (409 `vehicle_in_service`)."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    now = context.now_ms()
    try:
        record = life.offer_transfer(
            vehicle.vin,
            to_email=body.to_email,
            note=body.note,
            by=principal.user_id,
            now=now,
            expires_at=now + body.expires_in_s * 1000,
        )
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record(
        "vehicle_transfer_offer",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"transfer_id": record.id, "tenure": record.tenure},
    )
    return _out(context, record)


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
    manage (an owner's or a fleet manager's)."""
    no_store(response)
    record, _, receiver = _visible(life, principal, transfer_id)
    if not receiver:
        raise forbidden("Only the receiver accepts a transfer.")
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
    transfer_id: IdPath, principal: Caller, context: Auth, audit: CallerAudit, life: Lifecycle
) -> TransferOut:
    """The receiver turns the offer down; the vehicle stays with its holder."""
    record, _, receiver = _visible(life, principal, transfer_id)
    if not receiver:
        raise forbidden("Only the receiver declines a transfer; its holder cancels it.")
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
