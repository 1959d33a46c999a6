"""Vehicle provisioning (tag ``provisioning``): register a vehicle and create its broker
credentials, read its registration, revoke it, rotate its MQTT password.

Claiming a VIN starts a holding period; the next holder sees nothing of an earlier one
(decision 0009)."""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from gateway.accounts.provisioning import provision_vehicle, rotate_vehicle_password
from gateway.api.deps import Auth, Caller, CallerAudit, Settings, vin_or_422
from gateway.api.errors import ApiError, documented
from gateway.api.models.accounts import (
    MqttCredentials,
    ProvisionedOut,
    RegistrationOut,
    VehicleRequest,
)
from gateway.api.params import now_ms
from gateway.api.routes.common import (
    ACCOUNT_ERRORS,
    account_not_found,
    managed_vehicle,
    no_store,
    target_account,
)
from gateway.api.security import AuthContext, forbidden, too_many, vehicle_not_found
from gateway.api.settings import ApiSettings
from gateway.core.policy import Principal, Role, can_manage_account
from gateway.health import HEALTH_DIR_NAME, broker_wait_async
from gateway.statedb.accounts import (
    LifecycleRefused,
    NotFound,
    VehicleAlreadyProvisioned,
    VehicleRecord,
)
from schemas.edges import edge_index

__all__ = [
    "BROKER_APPLIED_HEADER",
    "BROKER_WAIT_S",
    "held_error",
    "not_claimable",
    "provisioned",
    "router",
]

router = APIRouter(responses=ACCOUNT_ERRORS)
log = logging.getLogger(__name__)

#: how long provisioning and a new password wait for this installation's broker (and the
#: vehicle's edge broker) to load the new credentials before answering; a broker whose
#: process is stopped (SIGSTOP) is not waited for
BROKER_WAIT_S: Final = 5.0
#: ``true``: the broker takes the new credentials now; ``false``: it had not loaded them
#: after ``BROKER_WAIT_S`` (a CONNECT may be refused with 0x87 until it has); absent: this
#: API does not run beside a ``telematics up`` broker that reports what it has loaded
BROKER_APPLIED_HEADER: Final = "Broker-Applied"
_BROKER_APPLIED_DOC: Final[dict[str, Any]] = {
    "headers": {
        BROKER_APPLIED_HEADER: {
            "description": (
                "`true`: this installation's broker (and the vehicle's edge broker) has "
                "loaded the new credentials, a unit connecting now is accepted. `false`: it "
                f"had not after {BROKER_WAIT_S:g} s, or at once when that broker is not "
                "responding (its process stopped, see /healthz); a CONNECT may be refused "
                "with 0x87 until it has (retry with backoff). Absent: the API does not know "
                "(no broker of `telematics up` reports beside it)."
            ),
            "schema": {"type": "string", "enum": ["true", "false"]},
        }
    }
}


@router.post(
    "/v1/vehicles",
    response_model=ProvisionedOut,
    status_code=201,
    tags=["provisioning"],
    summary="Provision a vehicle: register it and create its broker credentials",
    responses={201: _BROKER_APPLIED_DOC, **documented(429)},
)
async def provision(
    response: Response,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    body: VehicleRequest,
    settings: Settings,
) -> ProvisionedOut:
    """Owners add their car, fleet managers their organization's vehicles,
    administrators any. The answer holds the unit's MQTT credentials (user name = VIN;
    the password is shown only here) and the gateway's public key for verifying signed
    commands. Under `telematics up` the answer comes once the broker (and the vehicle's
    edge broker) has loaded the credentials, so a unit connecting at once is accepted;
    header `Broker-Applied: false` if that took more than 5 s, or at once if that broker is
    not responding (the unit may be refused with 0x87 until it has them).

    Claiming a VIN: a VIN nobody holds, never provisioned or revoked by its last holder,
    may be claimed by anyone who may add vehicles, and starts a new holding period: the
    new holder sees none of what the vehicle reported, was sent or shared before. A VIN
    another account holds (its holder must revoke it first), one the maker registered
    (claimed with its pairing code: POST /v1/vehicles/{vin}/claim) and a decommissioned
    one all answer the same 409 `vehicle_not_claimable`, so the answer does not tell
    which (administrators get the reason: `vehicle_held_by_another_account`,
    `pairing_code_required`, `vehicle_decommissioned`)."""
    no_store(response)
    answer = await run_in_threadpool(_provision, principal, context, audit, body)
    await _wait_for_broker(context, settings, response, answer.vin)
    return answer


def _provision(
    principal: Caller, context: Auth, audit: CallerAudit, body: VehicleRequest
) -> ProvisionedOut:
    vin = vin_or_422(body.vin, ["body", "vin"])
    account_id = target_account(principal, body.account_id, "the vehicle")
    if not can_manage_account(principal, account_id):
        if principal.account_id is not None and principal.account_id == account_id:
            raise forbidden("Only owners, fleet managers and administrators add vehicles.")
        raise account_not_found(account_id)
    _limit_owner(context, audit, principal, "vehicle_provision", account_id, vin)
    try:
        result = provision_vehicle(
            context.accounts,
            vin=vin,
            account_id=account_id,
            label=body.label,
            provisioned_by=principal.user_id,
            now=context.now_ms(),
            password=body.credentials == "password",
            by_operator=principal.is_admin,
        )
    except LifecycleRefused as exc:
        audit.record(
            "vehicle_provision",
            outcome="failed",
            account_id=account_id,
            target=f"vehicle:{vin}",
            detail={"error": exc.reason},
        )
        if not principal.is_admin:
            raise not_claimable(vin) from None
        raise ApiError(
            409,
            exc.reason,
            f"Vehicle {vin}: {exc.refusal.message}.",
        ) from None
    except NotFound:  # the account (the caller exists: they are logged in)
        raise account_not_found(account_id) from None
    except VehicleAlreadyProvisioned as exc:
        own = exc.account_id == account_id
        audit.record(
            "vehicle_provision",
            outcome="failed",
            account_id=account_id,
            target=f"vehicle:{vin}",
            detail={"error": "already provisioned" if own else "held by another account"},
        )
        if not own and not principal.is_admin:
            raise not_claimable(vin) from None
        raise held_error(vin, own) from None
    audit.record(
        "vehicle_provision",
        account_id=account_id,
        target=f"vehicle:{vin}",
        detail={"credentials": body.credentials, "label": body.label},
    )
    return provisioned(context, result.vehicle, result.mqtt_password)


@router.get(
    "/v1/vehicles/{vin}/registration",
    response_model=RegistrationOut,
    tags=["provisioning"],
    summary="A vehicle's registration: account, label, provisioned and revoked times",
)
def registration(vin: str, principal: Caller, context: Auth) -> RegistrationOut:
    """For anyone who may see the vehicle; never its credentials."""
    access, vehicle = context.lookup(principal, vin)
    if not access.read or vehicle is None:
        raise vehicle_not_found(vin)
    return RegistrationOut.model_validate(vehicle)


@router.delete(
    "/v1/vehicles/{vin}",
    response_model=RegistrationOut,
    tags=["provisioning"],
    summary="Revoke a vehicle: off the broker; its holding period, grants and commands end",
    responses={200: _BROKER_APPLIED_DOC},
)
async def revoke_vehicle(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    settings: Settings,
) -> RegistrationOut:
    """Under `telematics up` the answer comes once the broker (and the vehicle's edge
    broker) has dropped the unit's login: from then on it is refused (header
    `Broker-Applied: false` if that took more than 5 s, or at once if that broker is not
    responding); the gateway drops anything it still sends. Its open commands
    (queued, sent, accepted) are cancelled with the reason `vehicle_revoked` and never
    delivered, its grants end and its pending invitations are withdrawn. Its holding
    period ends: whoever provisions the VIN next (anyone may, see POST /v1/vehicles)
    starts a new one and sees none of this period's data, commands or grants."""
    answer = await run_in_threadpool(_revoke, vin, principal, context, audit)
    await _wait_for_broker(context, settings, response, answer.vin)
    return answer


def _revoke(vin: str, principal: Caller, context: Auth, audit: CallerAudit) -> RegistrationOut:
    vehicle = managed_vehicle(context, principal, vin)
    revoked = (
        context.accounts.revoke_vehicle(vin, now=context.now_ms(), by=principal.user_id) or vehicle
    )
    audit.record(
        "vehicle_revoke",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        detail={"tenure": vehicle.tenure},
    )
    return RegistrationOut.model_validate(revoked)


@router.post(
    "/v1/vehicles/{vin}/credentials",
    response_model=ProvisionedOut,
    tags=["provisioning"],
    summary="Give a vehicle a new MQTT password",
    responses={200: _BROKER_APPLIED_DOC, **documented(429)},
)
async def rotate_credentials(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    settings: Settings,
) -> ProvisionedOut:
    """The new password is shown only here. Under `telematics up` the answer comes once the
    broker (and the vehicle's edge broker) has loaded it: from then on the new password is
    accepted and the old one refused (header `Broker-Applied: false` if that took more than
    5 s, or at once if that broker is not responding)."""
    no_store(response)
    answer = await run_in_threadpool(_rotate, vin, principal, context, audit)
    await _wait_for_broker(context, settings, response, answer.vin)
    return answer


def _rotate(vin: str, principal: Caller, context: Auth, audit: CallerAudit) -> ProvisionedOut:
    vehicle = managed_vehicle(context, principal, vin)
    _limit_owner(context, audit, principal, "vehicle_credentials_rotate", vehicle.account_id, vin)
    result = rotate_vehicle_password(context.accounts, vin)
    if result is None:
        raise vehicle_not_found(vin)
    audit.record(
        "vehicle_credentials_rotate",
        account_id=vehicle.account_id,
        target=f"vehicle:{vin}",
        content=result.mqtt_password,  # every renewal is another password: never a repeat
    )
    return provisioned(context, result.vehicle, result.mqtt_password)


# --- helpers -------------------------------------------------------------------------------


def _limit_owner(
    context: AuthContext,
    audit: CallerAudit,
    principal: Principal,
    action: str,
    account_id: int | None,
    vin: str,
) -> None:
    """An owner's vehicle additions and new passwords use their ``--invitation-limit`` in a
    bucket of their own (429 ``vehicle_change_rate_limited``, audited as denied). Each one
    rewrites the broker's identities and reloads it, which re-checks every connected unit's
    password in the broker's one thread; anyone may register as an owner and claim any VIN
    nobody holds, so without a bound one account claimed 100 VINs in 13 s, and renewed
    its car's password as fast as the broker took it (security review 7, decision 0049).
    Fleet managers provision in bulk and administrators run the installation: not
    limited (the broker sync paces itself for everyone, ``IDENTITY_SYNC_SHARE``)."""
    if principal.role is not Role.OWNER or context.invitations is None:
        return
    wait = context.invitations.acquire(f"vehicle_change:user:{principal.user_id}")
    if wait > 0:
        audit.record(action, outcome="denied", account_id=account_id, target=f"vehicle:{vin}",
                     detail={"reason": "rate limited"})  # fmt: skip
        raise too_many(
            "vehicle_change_rate_limited",
            "You have added vehicles or renewed their passwords too often (an owner's "
            "changes are rate-limited); try again after Retry-After seconds.",
            wait,
        )


async def _wait_for_broker(
    context: AuthContext, settings: ApiSettings, response: Response, vin: str
) -> None:
    """Wait, at most ``BROKER_WAIT_S`` and without blocking the event loop, until the
    brokers ``vin``'s login depends on have loaded the identities as they are now (with
    edge brokers: the core and the VIN's edge, not every edge, decision 0038), and say in
    ``BROKER_APPLIED_HEADER`` whether they have. A broker whose process is stopped
    (SIGSTOP) is not waited for: ``false`` at once, and a warning. Nothing to wait for when
    no ``telematics up`` broker reports in this installation's health directory."""
    version = await run_in_threadpool(context.accounts.broker_version)
    health = settings.db_path.parent / HEALTH_DIR_NAME
    edges = context.settings.edge_broker_urls
    edge = edge_index(vin, len(edges)) if edges else None
    state = await broker_wait_async(
        health, version, timeout_s=BROKER_WAIT_S, now_ms=now_ms, edge=edge
    )
    if state is None:
        return
    response.headers[BROKER_APPLIED_HEADER] = "true" if state == "applied" else "false"
    if state == "not_responding":
        log.warning(
            "vehicle %s: answered without waiting for the broker (%s), which is not "
            "responding (its process is stopped); Broker-Applied: false",
            vin,
            "the core" if edge is None else f"the core or edge broker {edge}",
        )


def held_error(vin: str, own: bool) -> ApiError:
    """409 for a VIN already held (by the caller's account or another)."""
    if own:
        return ApiError(
            409,
            "vehicle_already_provisioned",
            f"Vehicle {vin} is already provisioned in this account. To give it new "
            f"credentials use POST /v1/vehicles/{vin}/credentials.",
        )
    return ApiError(
        409,
        "vehicle_held_by_another_account",
        f"Vehicle {vin} is held by another account; it can be claimed only after its holder "
        f"revokes it (DELETE /v1/vehicles/{vin}). If the car is yours now, ask its holder or "
        "this installation's operator to release it.",
    )


def not_claimable(vin: str) -> ApiError:
    """409 for a VIN that cannot be claimed by VIN, the same whatever the reason, so the
    answer says nothing of who holds it or whether the maker registered it."""
    return ApiError(
        409,
        "vehicle_not_claimable",
        f"Vehicle {vin} cannot be claimed by VIN here. A car the maker registered is claimed "
        f"with its pairing code (POST /v1/vehicles/{vin}/claim); a car somebody holds changes "
        f"hands by transfer, or after its holder revokes it (DELETE /v1/vehicles/{vin}); "
        "a decommissioned car is never claimed again.",
    )


def provisioned(
    context: AuthContext, vehicle: VehicleRecord, password: str | None
) -> ProvisionedOut:
    """The answer that hands a unit its credentials (shown once)."""
    key_path = context.settings.signing_public_key_path
    public_key = None
    if key_path is not None:
        try:
            public_key = key_path.read_text(encoding="ascii")
        except OSError:
            public_key = None
    registration = RegistrationOut.model_validate(vehicle)
    settings = context.settings
    # a certificate unit has no password for the plain listener: tell it the TLS one
    url = settings.broker_url
    if registration.credentials == "certificate" and settings.tls_broker_url is not None:
        url = settings.tls_broker_url
    elif settings.edge_broker_urls:  # its edge: no other broker takes its login (0038)
        edges = settings.edge_broker_urls
        url = edges[edge_index(vehicle.vin, len(edges)) - 1]
    return ProvisionedOut(
        **registration.model_dump(),
        mqtt=MqttCredentials(url=url, username=vehicle.vin, password=password),
        gateway_public_key=public_key,
    )
