"""The vehicle lifecycle (tag ``lifecycle``, issue 16): the maker registers a built car and
gets its pairing code, a buyer claims it with the code, its holder takes it in for service,
an administrator decommissions it, and the history of every change
(docs/decisions/0021-vehicle-lifecycle.md). Ownership transfers are
``gateway.api.routes.transfers``.

Every change is in the VIN's lifecycle history and in the audit log, with who and why; a
change the state machine (``gateway.core.vehicle_lifecycle``) refuses answers 409 with its
reason as the error code.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from gateway.accounts.pairing import new_pairing_code
from gateway.api.deps import Auth, Caller, CallerAudit, vin_or_422
from gateway.api.errors import ApiError
from gateway.api.models.accounts import ProvisionedOut
from gateway.api.models.lifecycle import (
    ClaimRequest,
    DecommissionRequest,
    LifecycleEventOut,
    LifecycleHistory,
    LifecycleOut,
    PairingCodeOut,
    ServiceRequest,
)
from gateway.api.routes.common import (
    ACCOUNT_ERRORS,
    account_not_found,
    managed_vehicle,
    no_store,
    target_account,
)
from gateway.api.routes.provisioning import held_error, provisioned
from gateway.api.security import AuthContext, forbidden, require_admin, too_many
from gateway.broker.auth import generate_password, hash_password
from gateway.core.policy import Principal, can_manage_account
from gateway.statedb.accounts import NotFound
from gateway.statedb.lifecycle import (
    Claimed,
    LifecycleRepository,
    PairingLocked,
    WrongCode,
    pairing_code_hash,
)
from gateway.statedb.lifecycle_log import LifecycleRefused
from gateway.statedb.service_partners import ServicePartnerRepository

__all__ = ["lifecycle_repository", "refused", "router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["lifecycle"])


async def lifecycle_repository(request: Request) -> LifecycleRepository:
    return LifecycleRepository(request.app.state.state_db)


Lifecycle = Annotated[LifecycleRepository, Depends(lifecycle_repository)]


def refused(exc: LifecycleRefused) -> ApiError:
    """409 with the state machine's reason as the code."""
    return ApiError(409, exc.reason, f"Vehicle {exc.vin}: {exc.refusal.message}.")


@router.post(
    "/v1/vehicles/{vin}/lifecycle/registration",
    response_model=PairingCodeOut,
    status_code=201,
    summary="Register a built car (the maker) and get its pairing code",
)
def register(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
) -> PairingCodeOut:
    """Administrators (the maker's installation). From now on the VIN can be claimed only
    with the code (POST /v1/vehicles/{vin}/claim); the code is shown only here."""
    require_admin(principal, "Registering a built vehicle")
    no_store(response)
    vin = vin_or_422(vin, ["path", "vin"])
    code = new_pairing_code()
    try:
        view = life.register(
            vin, code_hash=pairing_code_hash(vin, code), by=principal.user_id, now=context.now_ms()
        )
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record("vehicle_register", target=f"vehicle:{vin}")
    return PairingCodeOut(**LifecycleOut.model_validate(view).model_dump(), pairing_code=code)


@router.post(
    "/v1/vehicles/{vin}/pairing-code",
    response_model=PairingCodeOut,
    summary="A new pairing code for a built car (the old one stops working)",
)
def reissue_code(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
) -> PairingCodeOut:
    """Administrators. Also ends a lock-out after wrong codes."""
    require_admin(principal, "Issuing a pairing code")
    no_store(response)
    vin = vin_or_422(vin, ["path", "vin"])
    code = new_pairing_code()
    try:
        view = life.issue_code(
            vin, code_hash=pairing_code_hash(vin, code), by=principal.user_id, now=context.now_ms()
        )
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record("vehicle_pairing_code", target=f"vehicle:{vin}")
    return PairingCodeOut(**LifecycleOut.model_validate(view).model_dump(), pairing_code=code)


@router.post(
    "/v1/vehicles/{vin}/claim",
    response_model=ProvisionedOut,
    status_code=201,
    summary="Claim a registered car with its pairing code",
)
def claim(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: ClaimRequest,
) -> ProvisionedOut:
    """Owners and fleet managers claim into their account (administrators into any): the
    answer is the unit's credentials, as for POST /v1/vehicles. A code works once. Wrong
    codes count per account and VIN: after 5 in a row that account waits 1 s, then 2 s,
    4 s ... up to an hour before its next attempt is looked at (429 `pairing_locked`);
    after 20 for the VIN from all accounts, every account that guessed wrong waits too,
    but one that never did (the buyer with the code) does not. A VIN that cannot be
    claimed with a code (never registered, held by another account, decommissioned)
    answers like a wrong code (403 `pairing_code_wrong`): a claim says nothing about a car
    you do not hold. Claims are limited per user like invitations (429
    `claim_rate_limited`): each wrong one is stored."""
    no_store(response)
    vin = vin_or_422(vin, ["path", "vin"])
    account_id = target_account(principal, body.account_id, "the vehicle")
    if not can_manage_account(principal, account_id):
        if principal.account_id is not None and principal.account_id == account_id:
            raise forbidden("Only owners, fleet managers and administrators claim vehicles.")
        raise account_not_found(account_id)
    _limit_claims(context, audit, principal, account_id, vin)
    secret = generate_password() if body.credentials == "password" else None
    now = context.now_ms()
    target = f"vehicle:{vin}"
    try:
        outcome = life.claim(
            vin,
            code=body.code,
            account_id=account_id,
            label=body.label,
            mqtt_password_hash=None if secret is None else hash_password(secret),
            by=principal.user_id,
            now=now,
            uniform=not principal.is_admin,
        )
    except NotFound:
        raise account_not_found(account_id) from None
    except LifecycleRefused as exc:
        audit.record(
            "vehicle_claim",
            outcome="failed",
            account_id=account_id,
            target=target,
            detail={"error": exc.reason},
        )
        if exc.reason in {"vehicle_held", "vehicle_in_service"}:
            raise held_error(vin, own=life.view(vin).account_id == account_id) from None
        raise refused(exc) from None
    if not isinstance(outcome, Claimed):
        raise _claim_failed(audit, outcome, account_id, vin, now)
    audit.record(
        "vehicle_claim",
        account_id=account_id,
        target=target,
        detail={"credentials": body.credentials, "tenure": outcome.vehicle.tenure},
    )
    return provisioned(context, outcome.vehicle, secret)


def _limit_claims(
    context: AuthContext, audit: CallerAudit, principal: Principal, account_id: int, vin: str
) -> None:
    """429 ``claim_rate_limited`` beyond the user's claims (the invitations' limit, in its
    own bucket; administrators are not limited): each wrong claim stores a row."""
    if context.invitations is None or principal.is_admin:
        return
    wait = context.invitations.acquire(f"claim:user:{principal.user_id}")
    if wait > 0:
        audit.record(
            "vehicle_claim",
            outcome="denied",
            account_id=account_id,
            target=f"vehicle:{vin}",
            detail={"error": "rate limited"},
        )
        raise too_many("claim_rate_limited", "You have sent too many claims.", wait)


def _claim_failed(
    audit: CallerAudit, outcome: WrongCode | PairingLocked, account_id: int, vin: str, now: int
) -> ApiError:
    """The failed claim in the audit log, and its answer."""
    if isinstance(outcome, PairingLocked):
        detail: dict[str, object] = {"error": "locked"}
    else:
        detail = {"error": "wrong code", "failures": outcome.failures}
    audit.record(
        "vehicle_claim",
        outcome="failed",
        account_id=account_id,
        target=f"vehicle:{vin}",
        detail=detail,
    )
    if isinstance(outcome, PairingLocked):
        return too_many(
            "pairing_locked",
            f"Too many wrong pairing codes for vehicle {vin}.",
            (outcome.until - now) / 1000,
        )
    return ApiError(
        403,
        "pairing_code_wrong",
        f"That is not the pairing code of vehicle {vin}, or the vehicle cannot be claimed "
        "with a code (it was used already). Check the code on the vehicle's papers; the "
        "maker can issue a new one.",
    )


@router.get(
    "/v1/vehicles/{vin}/lifecycle",
    response_model=LifecycleHistory,
    summary="A vehicle's lifecycle state and the history of its changes",
)
def read_lifecycle(vin: str, principal: Caller, context: Auth, life: Lifecycle) -> LifecycleHistory:
    """Administrators read every change with who and why; the holder's managers read the
    state and the changes of their current holding period (without details naming other
    accounts)."""
    vin = vin_or_422(vin, ["path", "vin"])
    if principal.is_admin:
        history = [LifecycleEventOut.model_validate(e) for e in life.history(vin)]
    else:
        vehicle = managed_vehicle(context, principal, vin)
        # their own periods' changes, without the details that name other accounts (the
        # account a transfer came from, the workshop)
        history = [
            LifecycleEventOut.model_validate(e).model_copy(update={"detail": None})
            for e in life.history(vin)
            if e.account_id == vehicle.account_id and e.tenure == vehicle.tenure
        ]
    view = LifecycleOut.model_validate(life.view(vin))
    return LifecycleHistory(**view.model_dump(), history=history)


@router.post(
    "/v1/vehicles/{vin}/service",
    response_model=LifecycleOut,
    summary="Take a vehicle in for service at a workshop",
)
def start_service(
    request: Request,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: ServiceRequest,
) -> LifecycleOut:
    """The holder's owner or fleet managers. The workshop is a service partner the
    installation registered (GET /v1/service-partners lists them; any other account: 422
    `workshop_not_partner`). While in service the car cannot be transferred. The workshop's
    fleet managers and viewers read its diagnostics (GET /v1/vehicles/{vin}/diagnostics: no
    position) until `until` or until the service ends, every read in your audit log."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    if body.until <= context.now_ms():
        raise ApiError(
            422,
            "invalid_until",
            f"until {body.until} is not in the future: give when the workshop's access ends "
            "(epoch milliseconds).",
        )
    # a workshop is a service partner (issue 16, decision 0026): the same answer whether the
    # account is unregistered or does not exist, so this names no account
    if (
        ServicePartnerRepository(request.app.state.state_db).partner(body.workshop_account_id)
        is None
    ):
        raise ApiError(
            422,
            "workshop_not_partner",
            f"Account {body.workshop_account_id} is not a registered service partner: pick one "
            "from GET /v1/service-partners, or ask an administrator to register the workshop's "
            'organization account with POST /v1/service-partners {"account_id": ..., '
            '"name": ...}.',
        )
    try:
        view = life.start_service(
            vehicle.vin,
            workshop_account_id=body.workshop_account_id,
            until=body.until,
            by=principal.user_id,
            now=context.now_ms(),
            reason=body.reason,
        )
    except NotFound:
        raise account_not_found(body.workshop_account_id) from None
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record(
        "vehicle_service_start",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"workshop_account_id": body.workshop_account_id, "until": body.until},
    )
    return LifecycleOut.model_validate(view)


@router.delete(
    "/v1/vehicles/{vin}/service",
    response_model=LifecycleOut,
    summary="End a vehicle's service",
)
def end_service(
    request: Request,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
) -> LifecycleOut:
    """The workshop visit ends: the vehicle is back in its holder's hands (`active`), the
    workshop's access to its diagnostics ends, the maintenance items notified so far count
    as done, and transfers may be offered again."""
    vehicle = managed_vehicle(context, principal, vin_or_422(vin, ["path", "vin"]))
    try:
        view = life.end_service(vehicle.vin, by=principal.user_id, now=context.now_ms())
    except LifecycleRefused as exc:
        raise refused(exc) from None
    # the maintenance items notified so far were seen to (decision 0026)
    ServicePartnerRepository(request.app.state.state_db).service_done(
        vehicle.vin, vehicle.tenure, now=context.now_ms()
    )
    audit.record(
        "vehicle_service_end", account_id=vehicle.account_id, target=f"vehicle:{vehicle.vin}"
    )
    return LifecycleOut.model_validate(view)


@router.post(
    "/v1/vehicles/{vin}/decommission",
    response_model=LifecycleOut,
    summary="Decommission a vehicle for good",
)
def decommission(
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    life: Lifecycle,
    body: DecommissionRequest,
) -> LifecycleOut:
    """Administrators. Its holding period ends (grants, invitations, open commands and
    pending transfers with it), the broker refuses its unit within a second, and nobody
    can provision or claim the VIN again. Its data stays, readable by its holders'
    periods' rules (administrators)."""
    require_admin(principal, "Decommissioning a vehicle")
    vin = vin_or_422(vin, ["path", "vin"])
    try:
        view = life.decommission(
            vin, by=principal.user_id, now=context.now_ms(), reason=body.reason
        )
    except LifecycleRefused as exc:
        raise refused(exc) from None
    audit.record(
        "vehicle_decommission",
        account_id=view.account_id,
        target=f"vehicle:{vin}",
        detail={"reason": body.reason},
    )
    return LifecycleOut.model_validate(view)
