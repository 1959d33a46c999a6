"""Remote-service routes: create, read, list and cancel commands, and follow one live
(tag ``commands``).

The work is done by :class:`gateway.commands.service.CommandService`, which the app starts
in its lifespan when commands are configured (``ApiSettings.commands``). Without it these
routes answer ``503 commands_unavailable`` (``gateway.api.deps.command_service``), so the
OpenAPI document is the same either way. The command service's refusals (unknown vehicle,
moving, idempotency conflict, bad parameters) become HTTP answers in
``gateway.api.errors``.

Coroutines, unlike the other routes: the state-database calls on a command's path are
each well under a millisecond, less than a hop to the thread pool and back under load
(decision 0005); the reads of a GET go through ``asyncio.to_thread``, all of one request
in one trip (decision 0035).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.api.audit import AuditTrail
from gateway.api.deps import Auth, Caller, CallerAudit, Service, vin_or_422
from gateway.api.errors import ApiError, documented
from gateway.api.models import ErrorDetail
from gateway.api.models.commands import (
    CommandDetail,
    CommandOut,
    CommandPage,
    CommandRequest,
    CommandTypeOut,
    CommandTypePage,
    TransitionOut,
    command_detail,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.security import (
    AuthContext,
    CallerCredential,
    check_command_limits,
    context_of,
    forbidden,
    readable_data,
    still_authenticated,
    vehicle_not_found,
)
from gateway.api.streams import stream_response
from gateway.commands.service import CommandService, UnknownCommandType
from gateway.core.lifecycle import IllegalTransition, is_terminal
from gateway.core.policy import AccountKind, Principal, Role, VehicleAccess, fleet_service_allowed
from gateway.statedb.accounts import VehicleRecord
from gateway.statedb.commands import CommandRecord, TenureEnded
from gateway.statedb.database import WriteScope
from gateway.store import FIRST_TENURE
from schemas.commands import COMMAND_ID_PATTERN, COMMAND_SPECS, CommandType

__all__ = ["router"]

router = APIRouter(tags=["commands"], responses=documented(403, 404, 409, 422, 429, 503))

CommandId = Annotated[
    str, PathParam(pattern=COMMAND_ID_PATTERN, description="Command id (a UUID).")
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=200,
        description="Retry-safe key: the same key (for the same "
        "vehicle and body) returns the same command, never a second one.",
    ),
]


def _not_found(command_id: str) -> ApiError:
    return ApiError(
        404,
        "command_not_found",
        f"No command {command_id}. GET /v1/vehicles/{{vin}}/commands lists a vehicle's commands.",
    )


def _unknown_type(value: str) -> ApiError:
    exc = UnknownCommandType(value)
    return ApiError(
        422,
        "invalid_request",
        f"{exc}.",
        [ErrorDetail(loc=["body", "type"], msg=str(exc), type="unknown_command_type", input=value)],
    )


def _refusal(principal: Principal, access: VehicleAccess, vin: str, type_: str) -> ApiError:
    if principal.role is Role.FLEET_VIEWER and not access.may_command_anything:
        return forbidden(f"Fleet viewers see vehicle {vin} but cannot send it commands.")
    allowed = ", ".join(sorted(access.services or ())) or "none"
    return forbidden(
        f"You may not send {type_!r} to vehicle {vin}: the vehicle was shared with you for "
        f"these remote services only: {allowed}. Ask its owner to extend the grant."
    )


def _readable(
    context: AuthContext, principal: Principal, service: CommandService, command_id: str
) -> tuple[CommandRecord, VehicleAccess, int | None]:
    """The command, the caller's access to its vehicle and the vehicle's account, if the
    caller may read it; else 404 as if the command did not exist.

    Readable: for administrators, every command; for others, a command of the vehicle's
    current holding period (an earlier holder's commands are not the current one's), of
    a vehicle whose data they may read or that they sent themselves."""
    record = service.repo.get(command_id)
    if record is None:
        raise _not_found(command_id)
    access, vehicle = context.lookup(principal, record.vin)
    if not access.read:
        raise _not_found(command_id)
    if not principal.is_admin:
        current = vehicle.tenure if vehicle is not None else FIRST_TENURE
        own = record.requested_by == f"user:{principal.user_id}"
        if record.tenure != current or not (access.read_data or own):
            raise _not_found(command_id)
    return record, access, vehicle.account_id if vehicle is not None else None


async def _readable_command(
    context: AuthContext, principal: Principal, service: CommandService, command_id: str
) -> tuple[CommandRecord, VehicleAccess, int | None]:
    """:func:`_readable`, its reads in one trip to a worker thread (not one per read)."""
    return await asyncio.to_thread(_readable, context, principal, service, command_id)


# --- create --------------------------------------------------------------------------------


class _Admission:
    """One command request's authorization: who asks what of which vehicle, and the
    audit entries of its refusals (each refusal is audited, decision 0007)."""

    def __init__(
        self, context: AuthContext, audit: AuditTrail, principal: Principal, vin: str, type_: str
    ) -> None:
        self.context, self.audit, self.principal = context, audit, principal
        self.vin, self.type = vin, type_
        # state-database calls on the event loop (see the module docstring)
        self.access, self.vehicle = context.lookup(principal, vin)

    @property
    def account_id(self) -> int | None:
        return self.vehicle.account_id if self.vehicle is not None else None

    @property
    def tenure(self) -> int:
        return self.vehicle.tenure if self.vehicle is not None else FIRST_TENURE

    def deny(self, reason: str) -> None:
        self.audit.record(
            "command_create",
            outcome="denied",
            account_id=self.account_id if self.access.read else None,
            target=f"vehicle:{self.vin}",
            detail={"type": self.type, "reason": reason},
        )

    def check(self, command_type: CommandType) -> None:
        """404 unless the caller sees the vehicle, 403 unless they may send the type (a
        fleet service only to an organization's vehicle), 429 over the limits."""
        if not self.access.read:
            self.deny("not visible")
            raise vehicle_not_found(self.vin)
        if not self.access.may_command(self.type):
            self.deny("not permitted")
            raise _refusal(self.principal, self.access, self.vin, self.type)
        fleet_only = COMMAND_SPECS[command_type].enterprise_only
        kind = _account_kind(self.context, self.vehicle) if fleet_only else None
        if not fleet_service_allowed(fleet_only, kind):
            self.deny("enterprise only")
            raise ApiError(
                403,
                "enterprise_only",
                f"{self.type!r} is a fleet service, available for vehicles of an "
                "organization only.",
            )
        try:
            check_command_limits(self.context, self.principal, self.vin)
        except ApiError as exc:
            self.deny(exc.code)
            raise

    def created(self, session: WriteScope, record: CommandRecord) -> None:
        """The entry of a created command commits with the command: no commit of its
        own, and never one without the other."""
        self.audit.record_in(
            session,
            "command_create",
            account_id=self.account_id,
            target=f"vehicle:{self.vin}",
            detail={"type": self.type, "command_id": record.id},
        )


def _account_kind(context: AuthContext, vehicle: VehicleRecord | None) -> AccountKind | None:
    if vehicle is None:
        return None
    account = context.accounts.get_account(vehicle.account_id)
    return AccountKind(account.kind) if account is not None else None


@router.post(
    "/v1/vehicles/{vin}/commands",
    response_model=CommandOut,
    status_code=201,
    summary="Send a command to a vehicle",
    responses={
        200: {
            "model": CommandOut,
            "description": "Replay of an earlier request "
            "with the same Idempotency-Key: the same command, not a new one.",
        }
    },
)
async def create_command(
    request: Request,
    principal: Caller,
    vin: str,
    body: CommandRequest,
    service: Service,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Answers at once with the command id; follow it with GET /v1/commands/{id} or the
    live stream GET /v1/commands/{id}/events. The command is published immediately if the
    vehicle is online, else it waits (queued) until the vehicle comes online or expires.
    You need the vehicle's owner, its organization's fleet managers, or a grant that
    lists the command type; commands are rate limited per user and per vehicle (429
    with Retry-After)."""
    vin_or_422(vin, ["path", "vin"])
    try:
        command_type = CommandType(body.type)
    except ValueError:
        raise _unknown_type(body.type) from None
    # the app's auth context and the caller's audit trail taken here, not as the
    # dependencies ``Auth`` and ``CallerAudit``: FastAPI resolves each dependant and its
    # sub-dependants again per request (CallerAudit's tree repeats Caller's), which was the
    # largest part of the event loop's CPU per command (decisions 0051, 0058); the same
    # objects, the same checks
    context = context_of(request)
    audit = AuditTrail(context, request, principal)
    admission = _Admission(context, audit, principal, vin, body.type)
    admission.check(command_type)
    if body.ttl_s is not None and body.ttl_s > service.settings.max_ttl_s:
        raise ApiError(
            422,
            "invalid_request",
            f"ttl_s may be at most {service.settings.max_ttl_s} s.",
            [ErrorDetail(loc=["body", "ttl_s"], msg="too long", type="ttl", input=body.ttl_s)],
        )
    try:
        record, created = await service.create(
            vin=vin,
            type_=body.type,
            params=body.params,
            tenure=admission.tenure,
            ttl_s=body.ttl_s,
            idempotency_key=idempotency_key,
            requested_by=f"user:{principal.user_id}",
            on_created=admission.created,
        )
    except TenureEnded:
        admission.deny("vehicle revoked meanwhile")
        raise vehicle_not_found(vin) from None
    out = CommandOut.model_validate(record)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)


# --- read ----------------------------------------------------------------------------------


@router.get(
    "/v1/commands/{command_id}",
    response_model=CommandDetail,
    summary="One command, with every transition",
)
async def get_command(
    principal: Caller, command_id: CommandId, service: Service, context: Auth
) -> CommandDetail:
    """The command's current status, its timestamps, its confirmation by telemetry and
    the full list of transitions, each with the time it was recorded."""

    def read() -> CommandDetail:  # every read in one trip to a worker thread
        record, _, _ = _readable(context, principal, service, command_id)
        return command_detail(record, service.repo.transitions(command_id))

    return await asyncio.to_thread(read)


@router.get(
    "/v1/vehicles/{vin}/commands",
    response_model=CommandPage,
    summary="A vehicle's commands, newest first",
)
async def list_commands(
    principal: Caller,
    vin: str,
    service: Service,
    context: Auth,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> CommandPage:
    """Newest first (by creation time). Only the commands of the vehicle's current
    holder (administrators: of every holder)."""
    before = decode_cursor("commands", cursor, (int, str))
    vin_or_422(vin, ["path", "vin"])

    def read() -> list[CommandRecord]:  # both reads in one trip to a worker thread
        tenure, _ = readable_data(context, principal, vin)
        return service.repo.list_for_vehicle(
            vin,
            tenure=None if principal.is_admin else tenure,
            limit=limit + 1,
            before_created_at=before[0] if before is not None else None,
            before_id=before[1] if before is not None else None,
        )

    records = await asyncio.to_thread(read)
    items, following = page_of(
        [CommandOut.model_validate(r) for r in records],
        limit=limit,
        kind="commands",
        key=lambda c: [c.created_at, c.id],
    )
    return CommandPage(items=items, next=following)


@router.post(
    "/v1/commands/{command_id}/cancel",
    response_model=CommandOut,
    summary="Cancel a command that has not been sent yet",
)
async def cancel_command(
    principal: Caller,
    command_id: CommandId,
    service: Service,
    context: Auth,
    audit: CallerAudit,
) -> CommandOut:
    """Only a `queued` command (waiting for its vehicle to come online) can be
    cancelled; once sent it may already be running in the vehicle (`409`). You need
    the right to send that command type to the vehicle."""
    record, access, account_id = await _readable_command(context, principal, service, command_id)
    if not access.may_command(record.type):
        raise _refusal(principal, access, record.vin, record.type)
    try:
        record = await service.cancel(command_id)
    except IllegalTransition:
        raise ApiError(
            409,
            "not_cancellable",
            f"Command {command_id} is {record.status.value}: only a queued command can be "
            "cancelled; once sent it may already be running in the vehicle.",
        ) from None
    await asyncio.to_thread(
        audit.record,
        "command_cancel",
        account_id=account_id,
        target=f"vehicle:{record.vin}",
        detail={"command_id": command_id, "type": record.type},
    )
    return CommandOut.model_validate(record)


@router.get(
    "/v1/commands/{command_id}/events",
    summary="Live stream of a command's transitions (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "One `transition` event per status change, a "
            "`confirmation` event when telemetry confirms it (or not), and the "
            "stream ends when nothing more can happen.",
        }
    },
)
async def command_events(
    request: Request,
    principal: Caller,
    credential: CallerCredential,
    command_id: CommandId,
    service: Service,
    context: Auth,
) -> StreamingResponse:
    """Server-Sent Events: every transition so far, then each new one as it happens,
    then the confirmation; the stream ends when the command is final and its
    confirmation decided, or within 30 s of your losing the right to read it (your
    credential ended, the car's grant revoked or the car released). Counts towards your
    live streams (at most 8 at once by default: 429 `too_many_streams`)."""
    await _readable_command(context, principal, service, command_id)
    return stream_response(
        request,
        principal,
        lambda: _events(service, command_id, context, (principal, credential)),
        headers={"Cache-Control": "no-store"},
    )


_COMMAND_TYPES: Final[list[CommandTypeOut]] = [
    CommandTypeOut(
        type=spec.type.value,
        description=spec.description,
        enterprise_only=spec.enterprise_only,
        unsafe_while_moving=spec.unsafe_while_moving,
        params_schema=spec.params_model.model_json_schema(),
        confirmed_by=list(spec.confirmation.signals) if spec.confirmation else [],
    )
    for spec in COMMAND_SPECS.values()
]


@router.get(
    "/v1/command-types",
    response_model=CommandTypePage,
    summary="Command types, their parameters and what confirms them",
)
def command_types(principal: Caller) -> CommandTypePage:
    """Every command type of the device contract with its parameters (JSON Schema),
    whether it is refused while moving, and which signals confirm it. A fixed list,
    always one page (`next` is null)."""
    return CommandTypePage(items=_COMMAND_TYPES, next=None)


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


#: how often a command's live stream checks again that its caller may still read it
_RECHECK_S = 30.0


def _still_readable(
    context: AuthContext, caller: tuple[Principal, str], service: CommandService, command_id: str
) -> bool:
    """Does the caller's credential still hold, and may they still read the command (a
    grant revoked, a car released, a user moved: the stream ends, decision 0053)?"""
    principal, credential = caller
    if not still_authenticated(context, credential, principal):
        return False
    try:
        _readable(context, principal, service, command_id)
    except ApiError:
        return False
    return True


async def _events(
    service: CommandService, command_id: str, context: AuthContext, caller: tuple[Principal, str]
) -> AsyncIterator[bytes]:
    """Transitions as they are recorded. Woken at once by transitions this process records,
    and every second otherwise (another API process may record them). Every
    :data:`_RECHECK_S` the caller's access is checked again (:func:`_still_readable`): a
    queued command's stream may last its whole time to live (up to a day)."""
    seen = 0
    confirmation: str | None = None
    recheck = time.monotonic() + _RECHECK_S
    while True:
        if time.monotonic() >= recheck:
            recheck = time.monotonic() + _RECHECK_S
            if not await asyncio.to_thread(_still_readable, context, caller, service, command_id):
                return
        changed = service.changed(command_id)
        transitions = await asyncio.to_thread(service.repo.transitions, command_id, after_seq=seen)
        for t in transitions:
            yield _sse("transition", TransitionOut.model_validate(t).model_dump(mode="json"))
            seen = t.seq
        record = await asyncio.to_thread(service.repo.get, command_id)
        if record is None:
            return
        if record.confirmation != confirmation and record.confirmation != "pending":
            confirmation = record.confirmation
            yield _sse(
                "confirmation",
                {"confirmation": record.confirmation, "confirmed_at": record.confirmed_at},
            )
        if is_terminal(record.status) and record.confirmation != "pending":
            # a final transition committed after the read above is sent before the end
            later = await asyncio.to_thread(service.repo.transitions, command_id, after_seq=seen)
            for t in later:
                yield _sse("transition", TransitionOut.model_validate(t).model_dump(mode="json"))
            return
        try:
            await asyncio.wait_for(changed.wait(), 1.0)
        except TimeoutError:
            yield b": keep-alive\n\n"
