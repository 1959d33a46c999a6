"""Bulk commands (tag ``command-jobs``): one command to many vehicles, its progress and
its cancellation. The work is done by :class:`gateway.commands.jobs.JobService`.

Authorization is per vehicle, as for one command, with one rule for the whole request:

* a VIN the caller cannot see (missing, or another organization's) refuses the **whole
  job**, ``404 vehicle_not_found`` naming those VINs, nothing created: a job to a list
  with a typo must not quietly go to the rest, and a foreign VIN answers exactly like a
  missing one, so the list cannot be used to probe;
* a vehicle the caller sees but may not send this command (a fleet viewer, a grant without
  the type, a fleet service to a private car) is **refused in the job** with the reason,
  like a moving vehicle, one that never reported, or one over its per-vehicle command limit
  (each vehicle gets one token of its limit); if every vehicle is refused for a reason of
  the caller's rights, the job is refused (``403``), as the single command would be;
* the job costs **one** request of the caller's per-user command limit (a 500-van job is
  one action, not 500), and an organization may have ``max_running_jobs`` (5) jobs
  running at once (``429 too_many_jobs`` beyond).

Readable by administrators, its creator, and the fleet managers, viewers and owners of the
account it belongs to (the caller's; an administrator's job takes its vehicles' account
when they share one); cancellable by its creator and the account's managers. Anything else
answers 404 like a missing job.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.api.audit import AuditTrail
from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Caller, CallerAudit, Fleets, Jobs, Settings, vin_or_422
from gateway.api.errors import ApiError, documented, invalid_request
from gateway.api.limits import body_limit
from gateway.api.models import ErrorDetail
from gateway.api.models.notify import (
    JOB_BODY_BYTES,
    MAX_JOB_VEHICLES,
    CommandJobDetail,
    CommandJobOut,
    CommandJobPage,
    CommandJobRequest,
    RefusalOut,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.fleet_common import owned
from gateway.api.security import AuthContext, forbidden, too_many
from gateway.commands.jobs import JobRequest, JobService
from gateway.core.policy import (
    AccountKind,
    Principal,
    Role,
    can_manage_account,
    fleet_service_allowed,
)
from gateway.statedb.fleets import FleetRepository
from gateway.statedb.jobs import JobMember, JobRecord, Refusal, remember_job_key
from schemas.commands import COMMAND_SPECS, CommandType

__all__ = ["fleet_vins", "router"]

router = APIRouter(tags=["command-jobs"], responses=documented(403, 404, 409, 422, 429, 503))

JobId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Job id.")]
_READERS = frozenset({Role.FLEET_MANAGER, Role.FLEET_VIEWER, Role.OWNER})
#: refusals that come from the caller's rights (all of them: the job is refused, 403)
_RIGHTS = frozenset({"not_permitted", "enterprise_only"})


# --- the fleet seam --------------------------------------------------------------------------


def fleet_vins(fleets: FleetRepository, principal: Principal, fleet_id: int) -> list[str]:
    """The VINs of fleet ``fleet_id`` (404 ``fleet_not_found`` for a fleet the caller
    cannot see, like GET /v1/fleets/{id}); at most one job's worth (the job's bound then
    answers 422 for a larger fleet)."""
    owned(principal, fleets.get_fleet(fleet_id), "fleet", fleet_id)
    return fleets.fleet_vins(fleet_id, after=None, limit=MAX_JOB_VEHICLES + 1)


# --- who may do what with a job --------------------------------------------------------------


def _job_not_found(job_id: int) -> ApiError:
    return ApiError(
        404, "job_not_found", f"No command job {job_id} is visible to you. GET /v1/command-jobs."
    )


def _may_read(principal: Principal, job: JobRecord) -> bool:
    if principal.is_admin or job.created_by == principal.user_id:
        return True
    return (
        job.account_id is not None
        and job.account_id == principal.account_id
        and principal.role in _READERS
    )


async def _readable_job(jobs: JobService, principal: Principal, job_id: int) -> JobRecord:
    job = await asyncio.to_thread(jobs.repo.get, job_id)
    if job is None or not _may_read(principal, job):
        raise _job_not_found(job_id)
    return job


def _detail(jobs: JobService, job: JobRecord) -> CommandJobDetail:
    refusals = jobs.repo.refusals(job.id) if job.counts.get("refused") else []
    return CommandJobDetail(
        **CommandJobOut.model_validate(job).model_dump(),
        refusals=[RefusalOut(vin=r.vin, reason=r.reason, detail=r.detail) for r in refusals],
    )


# --- create ----------------------------------------------------------------------------------


class _Plan:
    """The caller's rights over each named vehicle: who gets a command, who is refused
    and why, which VINs are not visible, and the account the vehicles belong to."""

    def __init__(self) -> None:
        self.members: list[JobMember] = []
        self.refusals: list[Refusal] = []
        self.missing: list[int] = []  # indexes in the body's list
        self.accounts: set[int] = set()


def _authorize(
    context: AuthContext, principal: Principal, vins: list[str], command_type: CommandType
) -> _Plan:
    """Look the VINs up (a read per 1,000) and decide for each as a single command would."""
    plan = _Plan()
    fleet_only = COMMAND_SPECS[command_type].enterprise_only
    kinds: dict[int, AccountKind | None] = {}
    looked_up = context.lookup_many(principal, vins)
    for index, vin in enumerate(vins):
        access, vehicle = looked_up[vin]
        if not access.read:
            plan.missing.append(index)
            continue
        if vehicle is not None:
            plan.accounts.add(vehicle.account_id)
        if not access.may_command(command_type.value):
            plan.refusals.append(Refusal(vin, "not_permitted", "your rights do not include it"))
            continue
        if fleet_only and vehicle is not None:
            if vehicle.account_id not in kinds:
                account = context.accounts.get_account(vehicle.account_id)
                kinds[vehicle.account_id] = AccountKind(account.kind) if account else None
            if not fleet_service_allowed(True, kinds[vehicle.account_id]):
                plan.refusals.append(Refusal(vin, "enterprise_only", "a fleet service"))
                continue
        plan.members.append(JobMember(vin, vehicle.tenure if vehicle is not None else 1))
    return plan


def _checked_vins(
    body: CommandJobRequest, fleets: FleetRepository, principal: Principal
) -> list[str]:
    vins = body.vins if body.vins is not None else []
    if body.fleet_id is not None:
        vins = fleet_vins(fleets, principal, body.fleet_id)
    seen: set[str] = set()
    for index, vin in enumerate(vins):
        vin_or_422(vin, ["body", "vins", index])
        if vin in seen:
            raise invalid_request(["body", "vins", index], f"{vin} is named twice", "duplicate")
        seen.add(vin)
    return vins


def _charge_limits(context: AuthContext, principal: Principal, plan: _Plan) -> None:
    """One token of the caller's command limit for the job (429 without it); one of each
    member vehicle's limit, or that vehicle is refused in the job."""
    users, vehicles = context.user_commands, context.vehicle_commands
    if users is not None:
        wait = users.acquire(f"user:{principal.user_id}")
        if wait > 0:
            raise too_many(
                "user_rate_limited", f"You have sent too many commands (limit {users.limit}).", wait
            )
    if vehicles is None:
        return
    kept: list[JobMember] = []
    for member in plan.members:
        if vehicles.acquire(f"vehicle:{member.vin}") > 0:
            plan.refusals.append(
                Refusal(member.vin, "vehicle_rate_limited", f"limit {vehicles.limit}")
            )
        else:
            kept.append(member)
    plan.members = kept


def _refuse_unseen(
    audit: AuditTrail, body: CommandJobRequest, vins: list[str], plan: _Plan
) -> None:
    if not plan.missing:
        return
    audit.record(
        "command_job_create",
        outcome="denied",
        detail={"type": body.type, "reason": "not visible", "vehicles": len(plan.missing)},
    )
    raise ApiError(
        404,
        "vehicle_not_found",
        f"{len(plan.missing)} of the vehicles are not visible to you (missing or not yours); "
        "nothing was sent. Check the VINs; GET /v1/vehicles lists the vehicles you can see.",
        [
            ErrorDetail(loc=["body", "vins", i], msg="not found", type="vehicle_not_found")
            for i in plan.missing[:100]
        ],
    )


JobIdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Retry-safe key, per user, kept 24 h: the same key with the same "
        "body answers 200 with the job it made (no second job); with another body, 409.",
    ),
]


def _key_scope(principal: Principal) -> str:
    """Keys are per user (decision 0023; per organization before, so a colleague who used
    a key first had yours refused): a user's retries, by token or by API key, find the
    user's job."""
    return f"user:{principal.user_id}"


def _request_hash(body: CommandJobRequest) -> str:
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def _replayed(
    jobs: JobService, principal: Principal, key: str, digest: str, now: int
) -> JSONResponse | None:
    """The answer to a request whose ``Idempotency-Key`` was already used: the same job
    (200) for the same body, 409 for another body or a job this caller can no longer read;
    None when the key is new (or older than 24 hours)."""
    found = await asyncio.to_thread(jobs.repo.job_key, _key_scope(principal), key, now=now)
    if found is None:
        return None
    job = await asyncio.to_thread(jobs.repo.get, found.job_id)
    if found.request_hash != digest or job is None or not _may_read(principal, job):
        raise ApiError(
            409,
            "idempotency_key_reused",
            "You already used this Idempotency-Key within 24 hours "
            "for another request; nothing was sent. Use a new key for a new job.",
            [
                ErrorDetail(
                    loc=["header", "Idempotency-Key"],
                    msg="used for another request",
                    type="idempotency_key_reused",
                )
            ],
        )
    detail = await asyncio.to_thread(_detail, jobs, job)
    return JSONResponse(detail.model_dump(mode="json"), status_code=200)


def _check_target(body: CommandJobRequest, vins: list[str]) -> None:
    if not vins and body.fleet_id is not None:
        raise ApiError(
            422,
            "fleet_has_no_vehicles",
            f"Fleet {body.fleet_id} has no vehicles: there is nothing to send the command to. "
            f"Add vehicles to it (PUT /v1/fleets/{body.fleet_id}/vehicles/{{vin}}, one per VIN) "
            "first.",
            [
                ErrorDetail(
                    loc=["body", "fleet_id"],
                    msg="the fleet has no vehicles",
                    type="fleet_has_no_vehicles",
                )
            ],
        )


@router.post(
    "/v1/command-jobs",
    response_model=CommandJobDetail,
    status_code=201,
    summary="Send one command to many vehicles",
    openapi_extra=body_limit(JOB_BODY_BYTES),
    responses={413: {"description": "More than 256 KiB of body (`request_too_large`)."}},
)
async def create_job(
    principal: Caller,
    body: CommandJobRequest,
    jobs: Jobs,
    context: Auth,
    audit: CallerAudit,
    settings: Settings,
    fleets: Fleets,
    idempotency_key: JobIdempotencyKey = None,
) -> Any:
    """Answers at once with the job: a command per admitted vehicle (sent at once when
    online, else queued until the vehicle comes online within `ttl_s`) and a refusal with
    its reason per other vehicle. Follow it with GET /v1/command-jobs/{id} or the live
    stream GET /v1/stream. Up to 10,000 vehicles; see the tag for the rules. With an
    `Idempotency-Key`, a retried request answers 200 with the job it made."""
    try:
        command_type = CommandType(body.type)
    except ValueError:
        raise invalid_request(["body", "type"], f"unknown command type {body.type!r}",
                              "unknown_command_type", body.type) from None  # fmt: skip
    max_ttl = jobs.commands.settings.max_ttl_s
    if body.ttl_s is not None and body.ttl_s > max_ttl:
        raise invalid_request(["body", "ttl_s"], f"ttl_s may be at most {max_ttl} s", "ttl")
    digest = _request_hash(body)
    if idempotency_key is not None:
        replay = await _replayed(jobs, principal, idempotency_key, digest, context.now_ms())
        if replay is not None:
            return replay
    vins = _checked_vins(body, fleets, principal)
    _check_target(body, vins)
    if len(vins) > settings.max_job_vehicles:
        raise invalid_request(
            ["body", "vins"], f"at most {settings.max_job_vehicles} vehicles per job", "too_many"
        )
    plan = await asyncio.to_thread(_authorize, context, principal, vins, command_type)
    _refuse_unseen(audit, body, vins, plan)
    if not plan.members and all(r.reason in _RIGHTS for r in plan.refusals):
        audit.record("command_job_create", outcome="denied",
                     detail={"type": body.type, "reason": "not permitted"})  # fmt: skip
        raise forbidden(f"You may not send {body.type!r} to any of these vehicles.")
    account_id = principal.account_id
    if principal.is_admin:
        account_id = next(iter(plan.accounts)) if len(plan.accounts) == 1 else None
    running = await asyncio.to_thread(jobs.repo.running, account_id)
    if running >= settings.max_running_jobs:
        raise too_many("too_many_jobs", f"{running} command jobs are still running "
                       f"(at most {settings.max_running_jobs} at once).", 10)  # fmt: skip
    _charge_limits(context, principal, plan)

    def created(session: Session, job: JobRecord) -> None:
        audit.record_in(session, "command_job_create", account_id=account_id,
                        target=f"command_job:{job.id}",
                        detail={"type": body.type, "vehicles": job.total})  # fmt: skip
        if idempotency_key is not None:
            remember_job_key(session, scope=_key_scope(principal), key=idempotency_key,
                             request_hash=digest, job_id=job.id, now=job.created_at)  # fmt: skip

    try:
        job = await _create(jobs, body, principal, account_id, vins, plan, created)
    except IntegrityError:  # the same key at the same moment: the other request won
        if idempotency_key is None:
            raise
        replay = await _replayed(jobs, principal, idempotency_key, digest, context.now_ms())
        if replay is None:
            raise
        return replay
    detail = await asyncio.to_thread(_detail, jobs, job)
    return JSONResponse(detail.model_dump(mode="json"), status_code=201)


async def _create(
    jobs: JobService,
    body: CommandJobRequest,
    principal: Principal,
    account_id: int | None,
    vins: list[str],
    plan: _Plan,
    created: Callable[[Session, JobRecord], None],
) -> JobRecord:
    return await jobs.create(
        JobRequest(
            account_id=account_id,
            created_by=principal.user_id,
            type=body.type,
            params=body.params,
            ttl_s=body.ttl_s,
            target={"vins": len(vins)} if body.vins is not None else {"fleet_id": body.fleet_id},
            members=plan.members,
            refusals=plan.refusals,
        ),
        on_created=created,
    )


# --- read, list, cancel ----------------------------------------------------------------------


@router.get(
    "/v1/command-jobs/{job_id}",
    response_model=CommandJobDetail,
    summary="A command job's progress: counts per status and its refusals",
)
async def get_job(principal: Caller, job_id: JobId, jobs: Jobs) -> CommandJobDetail:
    """Counts are live: counted from the job's commands at each request."""
    job = await _readable_job(jobs, principal, job_id)
    return await asyncio.to_thread(_detail, jobs, job)


@router.get("/v1/command-jobs", response_model=CommandJobPage, summary="Command jobs, newest first")
async def list_jobs(
    principal: Caller, jobs: Jobs, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> CommandJobPage:
    """Administrators: every job; fleet managers, viewers and owners: their account's;
    everyone: the jobs they created."""
    before = cursor_key("command-jobs", cursor, int)
    records = await asyncio.to_thread(
        jobs.repo.page,
        account_id=principal.account_id if principal.role in _READERS else None,
        created_by=principal.user_id,
        everything=principal.is_admin,
        before_id=before,
        limit=limit + 1,
    )
    items, following = page_of(
        [CommandJobOut.model_validate(r) for r in records],
        limit=limit,
        kind="command-jobs",
        key=lambda j: [j.id],
    )
    return CommandJobPage(items=items, next=following)


@router.post(
    "/v1/command-jobs/{job_id}/cancel",
    response_model=CommandJobDetail,
    summary="Cancel what a command job has not sent yet",
)
async def cancel_job(
    principal: Caller, job_id: JobId, jobs: Jobs, audit: CallerAudit
) -> CommandJobDetail:
    """Cancels every command of the job still `queued` (waiting for its vehicle); those
    already sent or accepted may be running in the vehicle and go on to their end. For the
    job's creator and its account's managers. A finished job answers `409`."""
    job = await _readable_job(jobs, principal, job_id)
    if job.created_by != principal.user_id and not can_manage_account(principal, job.account_id):
        raise forbidden("Only the job's creator and its organization's managers may cancel it.")
    if job.finished_at is not None:
        raise ApiError(409, "not_cancellable", f"Command job {job_id} has finished.")
    job, cancelled = await jobs.cancel(job_id)
    await asyncio.to_thread(
        audit.record,
        "command_job_cancel",
        account_id=job.account_id,
        target=f"command_job:{job_id}",
        detail={"cancelled": cancelled},
    )
    return await asyncio.to_thread(_detail, jobs, job)
