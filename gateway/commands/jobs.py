"""Bulk commands: one command to many vehicles, carried out by the command service.

The API authorizes each vehicle (``gateway.api.routes.command_jobs``); this service admits
each one exactly as a single command is admitted (:func:`gateway.core.admission.admit`: a
vehicle that has reported, the moving rule, the time to live), stores the job with a
``queued`` command per admitted vehicle and a refusal (with its reason) per other one, in
one transaction (:class:`gateway.statedb.jobs.JobRepository`), and then dispatches the
commands of the vehicles not known to be offline in the background, yielding to the event
loop between commands so a 10,000-vehicle job does not stall other requests. Commands of
offline vehicles wait, queued, for the vehicle's ``online`` within their time to live, as
single commands do: they are ordinary commands from here on.

A job ends when its last command does (the repository finishes it in that command's
transaction); a sweep every few seconds also finishes jobs whose commands were ended by a
path that does not (a revocation), so no job stays running forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from gateway.commands.service import CommandService
from gateway.core.admission import VehicleMoving, VehicleNotFound, admit, check_request
from gateway.statedb.commands import CommandRecord, ConfirmationState
from gateway.statedb.jobs import JobMember, JobRecord, JobRepository, NewJob, Refusal

__all__ = ["JobRequest", "JobService"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """An authorized job: who, what, and the vehicles (with the holding period each was
    authorized in) plus those already refused by authorization."""

    account_id: int | None
    created_by: int
    type: str
    params: Mapping[str, Any]
    ttl_s: float | None
    target: Mapping[str, Any]
    members: Sequence[JobMember]
    refusals: Sequence[Refusal]


class JobService:
    """See the module docstring. :meth:`start` runs the sweep, :meth:`stop` ends it and
    the dispatches in flight."""

    def __init__(self, commands: CommandService, repository: JobRepository) -> None:
        self.commands = commands
        self.repo = repository
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self, *, sweep_s: float = 2.0) -> None:
        self._sweeper = asyncio.create_task(self._sweep_loop(sweep_s))

    async def stop(self) -> None:
        self._stopping.set()
        for task in [*self._tasks, *([self._sweeper] if self._sweeper else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def create(
        self,
        request: JobRequest,
        *,
        on_created: Callable[[Session, JobRecord], object] | None = None,
    ) -> JobRecord:
        """Admit each member, store the job, start dispatching; the job as stored. Raises
        ``UnknownCommandType`` and ``CommandParamsError`` (the request itself is wrong)."""
        checked = check_request(request.type, request.params)
        service = self.commands
        states = await asyncio.to_thread(
            service.vehicle_states, {(m.vin, m.tenure) for m in request.members}
        )
        now = service.now_ms()
        members: list[JobMember] = []
        refusals = list(request.refusals)
        send_now: set[str] = set()
        admission = None
        for member in request.members:
            state = states.get((member.vin, member.tenure))
            try:
                admission = admit(
                    checked,
                    vin=member.vin,
                    latest=None if state is None else state.latest,
                    online=None if state is None else state.summary.online,
                    now_ms=now,
                    ttl_s=request.ttl_s,
                    default_ttl_s=service.settings.default_ttl_s,
                    result_timeout_s=service.settings.result_timeout_s,
                )
            except VehicleNotFound:
                refusals.append(Refusal(member.vin, "never_reported", "no data from it yet"))
                continue
            except VehicleMoving as exc:
                refusals.append(Refusal(member.vin, "vehicle_moving", str(exc)[:200]))
                continue
            members.append(member)
            if admission.send_at_once:
                send_now.add(member.vin)
        ttl_s = service.settings.default_ttl_s if request.ttl_s is None else request.ttl_s
        confirms = admission.expects_confirmation if admission is not None else False
        job, created = await asyncio.to_thread(
            self.repo.create,
            NewJob(
                account_id=request.account_id,
                created_by=request.created_by,
                type=checked.type.value,
                params=checked.params,
                target=request.target,
                now=now,
                ttl_ms=int(ttl_s * 1000),
                result_timeout_ms=int(service.settings.result_timeout_s * 1000),
                confirmation=(
                    ConfirmationState.PENDING if confirms else ConfirmationState.NOT_APPLICABLE
                ),
                members=members,
                refusals=refusals,
            ),
            on_created=on_created,
        )
        self._dispatch_later([c for c in created if c.vin in send_now])
        return job

    def _dispatch_later(self, records: list[CommandRecord]) -> None:
        if not records:
            return
        task = asyncio.create_task(self._dispatch_all(records))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch_all(self, records: list[CommandRecord]) -> None:
        for record in records:
            try:
                await self.commands.dispatch(record)
            except Exception:
                log.exception("could not dispatch command %s of job %s", record.id, record.job_id)
            await asyncio.sleep(0)  # let requests and results in between

    async def cancel(self, job_id: int) -> tuple[JobRecord, int]:
        """Cancel what has not been sent; the job and how many commands were cancelled."""
        job, cancelled = await asyncio.to_thread(
            self.repo.cancel, job_id, at=self.commands.now_ms()
        )
        return job, cancelled

    async def _sweep_loop(self, period_s: float) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.repo.sweep_finished, at=self.commands.now_ms())
            except Exception:
                log.exception("job sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), period_s)
