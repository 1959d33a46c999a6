"""Roadside assistance (tag ``assistance``, issue 16 item 3): whoever reads a vehicle's data
(its owner, its fleet's managers and viewers, a driver with ``read``) shares its position
and the state that matters for help with an assistance partner, as a link with its own
token that works until it expires or until it is ended; the partner reads it without an
account, and every read is in the audit log (docs/decisions/0021-vehicle-lifecycle.md).

A share belongs to the holding period it was made in: a transfer or revocation ends it.
"""

from __future__ import annotations

import secrets
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import AfterValidator, BaseModel, Field

from gateway.api.bounds import ONLY_A_NUMBER
from gateway.api.deps import Audit, Auth, Caller, CallerAudit, Reader, vin_or_422
from gateway.api.errors import ApiError, documented
from gateway.api.models import Page
from gateway.api.models.accounts import IdPath
from gateway.api.models.records import FromRecord
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.params import iso
from gateway.api.routes.common import ACCOUNT_ERRORS, no_store
from gateway.api.security import AuthContext, principal_of, vehicle_not_found
from gateway.core.policy import Principal
from gateway.statedb.accounts import VehicleRecord
from gateway.statedb.assistance import (
    MAX_OPEN_SHARES,
    AssistanceRepository,
    AssistanceShare,
    share_token_hash,
)
from gateway.text import check_plain_text
from schemas import CATALOG

__all__ = ["SHARED_SIGNALS", "router"]

router = APIRouter(responses=ACCOUNT_ERRORS, tags=["assistance"])

#: what a partner sees: where the car is, how it moves, its energy, its faults, its tyres
SHARED_SIGNALS: tuple[str, ...] = tuple(
    name
    for name in CATALOG
    if name.startswith("Vehicle.CurrentLocation.")
    or name
    in {
        "Vehicle.Speed",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "Vehicle.Powertrain.FuelSystem.RelativeLevel",
        "Vehicle.Powertrain.FuelSystem.IsFuelLevelLow",
        "Vehicle.Diagnostics.DTCCount",
        "Vehicle.Diagnostics.DTCList",
    }
    or name.endswith(".Tire.Pressure")
)


def _plain(value: str) -> str:
    return check_plain_text(value, "the text")


class ShareRequest(BaseModel):
    partner: Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain)] = Field(
        description="Who helps (shown to you in the list and in the audit log)."
    )
    duration_s: Annotated[int, ONLY_A_NUMBER] = Field(
        default=4 * 3600, ge=60, le=24 * 3600, description="How long the link works."
    )


class ShareOut(FromRecord):
    id: int
    vin: str
    partner: str
    created_at: int
    created_at_iso: str
    expires_at: int
    expires_at_iso: str
    ended_at: int | None
    ended_at_iso: str | None


class ShareCreated(ShareOut):
    token: str = Field(description="Shown only here: the partner's key to the share.")
    partner_path: str = Field(description="What the partner GETs (no account needed).")


class SharePage(Page):
    items: list[ShareOut] = Field(description="Newest first.")


class SignalOut(BaseModel):
    value: Any
    ts: int
    ts_iso: str


class SharedStateOut(BaseModel):
    vin: str
    partner: str
    expires_at: int
    expires_at_iso: str
    signals: dict[str, SignalOut] = Field(
        description="The latest value of each shared signal the car has reported."
    )


async def assistance_repository(request: Request) -> AssistanceRepository:
    return AssistanceRepository(request.app.state.state_db)


Shares = Annotated[AssistanceRepository, Depends(assistance_repository)]


def _readable(context: AuthContext, principal: Principal, vin: str) -> VehicleRecord:
    access, vehicle = context.lookup(principal, vin)
    if not access.read_data or vehicle is None or not vehicle.active:
        raise vehicle_not_found(vin)
    return vehicle


def _creator_still_reads(context: AuthContext, share: AssistanceShare) -> bool:
    """A share lasts no longer than its maker's own access: a driver whose grant ended, or a
    disabled user, no longer shares the car's position through a link made before."""
    if share.created_by is None:
        return True  # made by the system
    user = context.accounts.get_user(share.created_by)
    if user is None or user.disabled_at is not None:
        return False
    access, vehicle = context.lookup(principal_of(user), share.vin)
    return access.read_data and vehicle is not None and vehicle.tenure == share.tenure


class _ReadAudit:
    """Every partner's reads are in the audit log, at most one entry per share a minute:
    the link needs no account, so each read appending an undeletable row would let anyone
    holding a token fill the disk."""

    def __init__(self, every_ms: int = 60_000, size: int = 10_000) -> None:
        self._every_ms, self._size = every_ms, size
        self._last: dict[int, int] = {}
        self._lock = threading.Lock()

    def due(self, share_id: int, now: int) -> bool:
        with self._lock:
            last = self._last.get(share_id)
            if last is not None and now - last < self._every_ms:
                return False
            if len(self._last) >= self._size:
                self._last.clear()
            self._last[share_id] = now
            return True


async def _read_audit(request: Request) -> _ReadAudit:
    """The app's one :class:`_ReadAudit` (per app, so two apps in one process never share)."""
    state = request.app.state
    if not hasattr(state, "assistance_reads"):
        state.assistance_reads = _ReadAudit()
    reads: _ReadAudit = state.assistance_reads
    return reads


ReadAudit = Annotated[_ReadAudit, Depends(_read_audit)]


def _share_not_found(share_id: int | str) -> ApiError:
    return ApiError(
        404, "share_not_found", f"No assistance share {share_id} of this vehicle is visible."
    )


@router.post(
    "/v1/vehicles/{vin}/assistance-shares",
    response_model=ShareCreated,
    status_code=201,
    summary="Share the vehicle's position and state with an assistance partner",
)
def create_share(
    response: Response,
    vin: str,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    shares: Shares,
    body: ShareRequest,
) -> ShareCreated:
    """The answer holds the token, once: hand the partner `partner_path`. It works until
    `expires_at`, until someone who reads the vehicle ends it, or until the vehicle changes
    hands."""
    no_store(response)
    vehicle = _readable(context, principal, vin_or_422(vin, ["path", "vin"]))
    token = secrets.token_urlsafe(24)
    now = context.now_ms()
    share = shares.create(
        vin=vehicle.vin,
        tenure=vehicle.tenure,
        account_id=vehicle.account_id,
        partner=body.partner,
        token_hash=share_token_hash(token),
        by=principal.user_id,
        now=now,
        expires_at=now + body.duration_s * 1000,
    )
    if share is None:
        raise ApiError(
            409,
            "too_many_shares",
            f"Vehicle {vehicle.vin} already has {MAX_OPEN_SHARES} open assistance shares, the "
            "most it may have; end one (DELETE /v1/vehicles/{vin}/assistance-shares/{id}) first.",
        )
    audit.record(
        "assistance_share_create",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"share_id": share.id, "partner": share.partner, "expires_at": share.expires_at},
    )
    out = ShareOut.model_validate(share)
    return ShareCreated(**out.model_dump(), token=token, partner_path=f"/v1/assistance/{token}")


@router.get(
    "/v1/vehicles/{vin}/assistance-shares",
    response_model=SharePage,
    summary="The vehicle's assistance shares",
)
def list_shares(
    vin: str,
    principal: Caller,
    context: Auth,
    shares: Shares,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> SharePage:
    """The vehicle's assistance shares in the current holding period, open and ended
    (the link's token is shown only when a share is made)."""
    vehicle = _readable(context, principal, vin_or_422(vin, ["path", "vin"]))
    found = shares.list_for(
        vehicle.vin,
        vehicle.tenure,
        before_id=cursor_key("assistance-shares", cursor, int),
        limit=limit + 1,
    )
    items, following = page_of(
        [ShareOut.model_validate(s) for s in found],
        limit=limit,
        kind="assistance-shares",
        key=lambda s: [s.id],
    )
    return SharePage(items=items, next=following)


@router.delete(
    "/v1/vehicles/{vin}/assistance-shares/{share_id}",
    response_model=ShareOut,
    summary="End an assistance share",
)
def end_share(
    vin: str,
    share_id: IdPath,
    principal: Caller,
    context: Auth,
    audit: CallerAudit,
    shares: Shares,
) -> ShareOut:
    """Ends the share at once: its link answers 410 from now on."""
    vehicle = _readable(context, principal, vin_or_422(vin, ["path", "vin"]))
    share = shares.end(
        share_id, vin=vehicle.vin, tenure=vehicle.tenure, by=principal.user_id, now=context.now_ms()
    )
    if share is None:
        raise _share_not_found(share_id)
    audit.record(
        "assistance_share_end",
        account_id=vehicle.account_id,
        target=f"vehicle:{vehicle.vin}",
        detail={"share_id": share.id},
    )
    return ShareOut.model_validate(share)


@router.get(
    "/v1/assistance/{token}",
    response_model=SharedStateOut,
    responses=documented(410),
    summary="What an assistance partner sees (no account: the token is the key)",
)
def read_share(
    response: Response,
    token: str,
    context: Auth,
    audit: Audit,
    reader: Reader,
    shares: Shares,
    reads: ReadAudit,
) -> SharedStateOut:
    """404 for a token that is not a share's; 410 once the share has expired or was ended,
    or the vehicle changed hands. Every read is in the audit log."""
    no_store(response)
    found = None if len(token) > 64 else shares.by_token(share_token_hash(token))
    if found is None:
        raise ApiError(404, "share_not_found", "No assistance share has this token.")
    share, current = found
    now = context.now_ms()
    if not (current and share.open_at(now) and _creator_still_reads(context, share)):
        raise ApiError(410, "share_ended", "This assistance share has expired or was ended.")
    state = reader.vehicle_state(share.vin, tenure=share.tenure)
    latest = {} if state is None else state.latest
    signals = {
        name: SignalOut(value=value, ts=ts, ts_iso=iso(ts))
        for name, (value, ts) in latest.items()
        if name in SHARED_SIGNALS
    }
    if reads.due(share.id, now):
        audit.record(
            "assistance_share_read",
            account_id=share.account_id,
            target=f"vehicle:{share.vin}",
            detail={"share_id": share.id, "partner": share.partner, "signals": sorted(signals)},
        )
    return SharedStateOut(
        vin=share.vin,
        partner=share.partner,
        expires_at=share.expires_at,
        expires_at_iso=iso(share.expires_at),
        signals=signals,
    )
