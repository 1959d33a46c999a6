"""Remote-service routes: create, read, list and cancel commands, and follow one live.

The work is done by :class:`gateway.commands.service.CommandService`, which the app starts
in its lifespan when commands are configured (``ApiSettings.commands``). Without it these
routes answer ``503 commands_unavailable``, so the OpenAPI document is the same either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Depends, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from gateway.api.errors import ApiError
from gateway.api.models import ErrorDetail, ErrorResponse, Page
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, decode_cursor, page_of
from gateway.api.params import iso, iso_or_none
from gateway.api.security import (
    Auth,
    AuthContext,
    Caller,
    check_command_limits,
    client_address,
    forbidden,
    readable_data,
    vehicle_not_found,
)
from gateway.auth.policy import AccountKind, Principal, Role, VehicleAccess
from gateway.commands.service import (
    CommandService,
    UnknownCommandType,
    VehicleMoving,
    VehicleNotFound,
)
from gateway.core.lifecycle import IllegalTransition, is_terminal
from gateway.statedb.audit import AuditLog
from gateway.statedb.commands import (
    CommandRecord,
    IdempotencyConflict,
    TenureEnded,
    TransitionRecord,
)
from gateway.store import FIRST_TENURE
from schemas.commands import COMMAND_ID_PATTERN, COMMAND_SPECS, CommandParamsError, CommandType

__all__ = ["CommandOut", "commands_router"]

#: the schema's bound of ``ttl_s`` (a year); the gateway's own maximum (CommandSettings,
#: 24 h by default) is checked against the request as well
MAX_TTL_S: Final = 365 * 24 * 3600


class CommandRequest(BaseModel):
    """Body of ``POST /v1/vehicles/{vin}/commands``."""

    type: str = Field(description="Command type; GET /v1/command-types lists them.")
    params: dict[str, Any] = Field(
        default_factory=dict, description='Parameters of the type, e.g. {"percent": 80}.'
    )
    ttl_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_S,
        allow_inf_nan=False,
        description="Time to live in seconds: the command is never started after it "
        "(default: the gateway's, 300 s; at most the gateway's maximum).",
    )


class TransitionOut(BaseModel):
    seq: int
    status: str
    event: str | None
    at: int
    at_iso: str
    reason: str | None
    detail: str | None


class CommandOut(BaseModel):
    """A command as lists and creation answer it; GET /v1/commands/{id} adds its
    transitions (:class:`CommandDetail`)."""

    id: str
    vin: str
    type: str
    params: dict[str, Any]
    status: str
    terminal: bool
    reason: str | None
    detail: str | None
    idempotency_key: str | None
    created_at: int
    created_at_iso: str
    expires_at: int
    expires_at_iso: str
    sent_at: int | None
    sent_at_iso: str | None
    accepted_at: int | None
    accepted_at_iso: str | None
    finished_at: int | None
    finished_at_iso: str | None
    #: pending, confirmed, unconfirmed or not_applicable
    confirmation: str
    confirmed_at: int | None
    confirmed_at_iso: str | None


class CommandDetail(CommandOut):
    transitions: list[TransitionOut] = Field(description="Every status change, oldest first.")


class CommandPage(Page):
    items: list[CommandOut] = Field(description="Newest first.")


class CommandTypeOut(BaseModel):
    type: str
    description: str
    enterprise_only: bool
    unsafe_while_moving: bool
    params_schema: dict[str, Any]
    confirmed_by: list[str]


class CommandTypePage(Page):
    items: list[CommandTypeOut] = Field(description="Every command type; always one page.")


def _transition_out(t: TransitionRecord) -> TransitionOut:
    return TransitionOut(
        seq=t.seq,
        status=t.status.value,
        event=t.event,
        at=t.at,
        at_iso=iso(t.at),
        reason=t.reason,
        detail=t.detail,
    )


def command_out(record: CommandRecord) -> CommandOut:
    return CommandOut(
        id=record.id,
        vin=record.vin,
        type=record.type,
        params=dict(record.params),
        status=record.status.value,
        terminal=is_terminal(record.status),
        reason=record.reason,
        detail=record.detail,
        idempotency_key=record.idempotency_key,
        created_at=record.created_at,
        created_at_iso=iso(record.created_at),
        expires_at=record.expires_at,
        expires_at_iso=iso(record.expires_at),
        sent_at=record.sent_at,
        sent_at_iso=iso_or_none(record.sent_at),
        accepted_at=record.accepted_at,
        accepted_at_iso=iso_or_none(record.accepted_at),
        finished_at=record.finished_at,
        finished_at_iso=iso_or_none(record.finished_at),
        confirmation=record.confirmation,
        confirmed_at=record.confirmed_at,
        confirmed_at_iso=iso_or_none(record.confirmed_at),
    )


def command_detail(record: CommandRecord, transitions: list[TransitionRecord]) -> CommandDetail:
    return CommandDetail(
        **command_out(record).model_dump(), transitions=[_transition_out(t) for t in transitions]
    )


def command_service(request: Request) -> CommandService:
    service: CommandService | None = getattr(request.app.state, "commands", None)
    if service is None:
        raise ApiError(
            503,
            "commands_unavailable",
            "Remote commands are not configured on this API process: start it with a broker "
            "(telematics up, or telematics api --mqtt-url mqtt://host:port).",
        )
    return service


Service = Annotated[CommandService, Depends(command_service)]
CommandId = Annotated[
    str, PathParam(pattern=COMMAND_ID_PATTERN, description="Command id (a UUID).")
]


def _not_found(command_id: str) -> ApiError:
    return ApiError(
        404,
        "command_not_found",
        f"No command {command_id}. GET /v1/vehicles/{{vin}}/commands lists a vehicle's commands.",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (403, 404, 409, 422, 429, 503)
}


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


async def _readable_command(
    context: AuthContext, principal: Principal, service: CommandService, command_id: str
) -> tuple[CommandRecord, VehicleAccess, int | None]:
    """The command, the caller's access to its vehicle and the vehicle's account, if the
    caller may read it; else 404 as if the command did not exist.

    Readable: for administrators, every command; for others, a command of the vehicle's
    current holding period (an earlier holder's commands are not the current one's), of
    a vehicle whose data they may read or that they sent themselves."""
    record = await asyncio.to_thread(service.repo.get, command_id)
    if record is None:
        raise _not_found(command_id)
    access, vehicle = await asyncio.to_thread(context.lookup, principal, record.vin)
    if not access.read:
        raise _not_found(command_id)
    if not principal.is_admin:
        current = vehicle.tenure if vehicle is not None else FIRST_TENURE
        own = record.requested_by == f"user:{principal.user_id}"
        if record.tenure != current or not (access.read_data or own):
            raise _not_found(command_id)
    return record, access, vehicle.account_id if vehicle is not None else None


def commands_router() -> APIRouter:
    router = APIRouter(tags=["commands"], responses=_ERRORS)

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
        principal: Caller,
        request: Request,
        vin: str,
        body: CommandRequest,
        service: Service,
        context: Auth,
        idempotency_key: Annotated[
            str | None,
            Header(
                max_length=200,
                description="Retry-safe key: the same key (for the same "
                "vehicle and body) returns the same command, never a second one.",
            ),
        ] = None,
    ) -> Any:
        """Answers at once with the command id; follow it with GET /v1/commands/{id} or the
        live stream GET /v1/commands/{id}/events. The command is published immediately if the
        vehicle is online, else it waits (queued) until the vehicle comes online or expires.
        You need the vehicle's owner, its organization's fleet managers, or a grant that
        lists the command type; commands are rate limited per user and per vehicle (429
        with Retry-After)."""
        from gateway.api.app import valid_vin

        valid_vin(vin)
        try:
            command_type = CommandType(body.type)
        except ValueError:
            raise _unknown_type(body.type) from None
        # state-database calls on the event loop, as in the command service: each is well
        # under a millisecond, less than a hop to the thread pool and back under load
        access, vehicle = context.lookup(principal, vin)
        account_id = vehicle.account_id if vehicle is not None else None
        tenure = vehicle.tenure if vehicle is not None else FIRST_TENURE

        def audit(outcome: str, **detail: Any) -> None:
            context.record(
                request,
                "command_create",
                principal=principal,
                outcome=outcome,
                account_id=account_id if access.read else None,
                target=f"vehicle:{vin}",
                detail={"type": body.type, **detail},
            )

        def audit_created(session: Session, record: CommandRecord) -> None:
            """The entry of a created command commits with the command: no commit of its
            own, and never one without the other."""
            AuditLog.append_in(
                session,
                at=context.now_ms(),
                actor=principal.actor,
                actor_user_id=principal.user_id,
                action="command_create",
                account_id=account_id,
                target=f"vehicle:{vin}",
                remote_addr=client_address(request),
                detail={"type": body.type, "command_id": record.id},
            )

        if not access.read:
            audit("denied", reason="not visible")
            raise vehicle_not_found(vin)
        if not access.may_command(body.type):
            audit("denied", reason="not permitted")
            raise _refusal(principal, access, vin, body.type)
        spec = COMMAND_SPECS[command_type]
        if spec.enterprise_only and vehicle is not None:
            account = context.accounts.get_account(vehicle.account_id)
            if account is not None and account.kind != AccountKind.ORGANIZATION:
                audit("denied", reason="enterprise only")
                raise ApiError(
                    403,
                    "enterprise_only",
                    f"{body.type!r} is a fleet service, available for vehicles of an "
                    "organization only.",
                )
        try:
            check_command_limits(context, principal, vin)
        except ApiError as exc:
            audit("denied", reason=exc.code)
            raise
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
                tenure=tenure,
                ttl_s=body.ttl_s,
                idempotency_key=idempotency_key,
                requested_by=f"user:{principal.user_id}",
                on_created=audit_created,
            )
        except CommandParamsError as exc:
            raise ApiError(
                422,
                "invalid_request",
                f"{exc}",
                [
                    ErrorDetail(
                        loc=["body", "params", exc.field],
                        msg=str(exc),
                        type="invalid_param",
                        input=None,
                    )
                ],
            ) from None
        except VehicleNotFound as exc:
            raise ApiError(404, "vehicle_not_found", f"{exc}.") from None
        except VehicleMoving as exc:
            raise ApiError(409, "vehicle_moving", f"{exc}.") from None
        except IdempotencyConflict as exc:
            raise ApiError(409, "idempotency_conflict", f"{exc}") from None
        except TenureEnded:
            audit("denied", reason="vehicle revoked meanwhile")
            raise vehicle_not_found(vin) from None
        out = command_out(record)
        return JSONResponse(out.model_dump(mode="json"), status_code=201 if created else 200)

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
        record, _, _ = await _readable_command(context, principal, service, command_id)
        transitions = await asyncio.to_thread(service.repo.transitions, command_id)
        return command_detail(record, transitions)

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
        from gateway.api.app import valid_vin

        before = decode_cursor("commands", cursor, (int, str))
        valid_vin(vin)
        tenure, _ = await asyncio.to_thread(readable_data, context, principal, vin)
        records = await asyncio.to_thread(
            service.repo.list_for_vehicle,
            vin,
            tenure=None if principal.is_admin else tenure,
            limit=limit + 1,
            before_created_at=before[0] if before is not None else None,
            before_id=before[1] if before is not None else None,
        )
        items, following = page_of(
            [command_out(r) for r in records],
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
        request: Request,
        command_id: CommandId,
        service: Service,
        context: Auth,
    ) -> CommandOut:
        """Only a `queued` command (waiting for its vehicle to come online) can be
        cancelled; once sent it may already be running in the vehicle (`409`). You need
        the right to send that command type to the vehicle."""
        record, access, account_id = await _readable_command(
            context, principal, service, command_id
        )
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
            context.record,
            request,
            "command_cancel",
            principal=principal,
            account_id=account_id,
            target=f"vehicle:{record.vin}",
            detail={"command_id": command_id, "type": record.type},
        )
        return command_out(record)

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
        principal: Caller, command_id: CommandId, service: Service, context: Auth
    ) -> StreamingResponse:
        """Server-Sent Events: every transition so far, then each new one as it happens,
        then the confirmation; the stream ends when the command is final and its
        confirmation decided."""
        await _readable_command(context, principal, service, command_id)
        return StreamingResponse(
            _events(service, command_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

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

    return router


_COMMAND_TYPES: list[CommandTypeOut] = [
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


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _events(service: CommandService, command_id: str) -> AsyncIterator[bytes]:
    """Transitions as they are recorded. Woken at once by transitions this process records,
    and every second otherwise (another API process may record them)."""
    seen = 0
    confirmation: str | None = None
    while True:
        changed = service.changed(command_id)
        transitions = await asyncio.to_thread(service.repo.transitions, command_id, after_seq=seen)
        for t in transitions:
            yield _sse("transition", _transition_out(t).model_dump(mode="json"))
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
            return
        try:
            await asyncio.wait_for(changed.wait(), 1.0)
        except TimeoutError:
            yield b": keep-alive\n\n"
