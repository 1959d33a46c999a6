"""The job repository: bulk commands (one command to many vehicles) persisted.

A job is a row of ``command_jobs`` plus ordinary commands that point to it
(``commands.job_id``) and the vehicles that got none (``command_job_refusals``, with the
reason). :meth:`JobRepository.create` writes all of it in one transaction, so a job never
exists half made; each command starts ``queued`` with its history row, exactly as
:meth:`gateway.statedb.commands.CommandRepository.create` makes one, and the command service
then dispatches them like any other. Counts per status are counted from the commands
(``job_counts``), never stored. A job ends when its last command does
(``finish_job_if_done``, in that command's transaction).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.orm import Session

from gateway.core.lifecycle import CommandEvent, CommandStatus, transition
from gateway.statedb.commands import (
    CommandRecord,
    CommandRepository,
    _add_queued,
    command_event,
    finish_job_if_done,
    job_counts,
    request_hash,
)
from gateway.statedb.database import StateDatabase
from gateway.statedb.events import publish
from gateway.statedb.models import (
    CommandJobKeyRow,
    CommandJobRefusalRow,
    CommandJobRow,
    CommandRow,
    VehicleRow,
)

__all__ = [
    "JOB_KEY_TTL_MS",
    "JobKey",
    "JobMember",
    "JobRecord",
    "JobRepository",
    "Refusal",
    "remember_job_key",
]

#: reason of a vehicle revoked (or provisioned anew) between authorization and creation
TENURE_ENDED = "vehicle_revoked"


@dataclass(frozen=True, slots=True)
class JobMember:
    """A vehicle that gets a command: its VIN and the holding period it was authorized in."""

    vin: str
    tenure: int


@dataclass(frozen=True, slots=True)
class Refusal:
    vin: str
    reason: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: int
    account_id: int | None
    created_by: int
    type: str
    params: dict[str, Any]
    target: dict[str, Any]
    total: int
    created_at: int
    expires_at: int
    cancelled_at: int | None
    finished_at: int | None
    counts: dict[str, int]

    @classmethod
    def from_row(cls, row: CommandJobRow, counts: dict[str, int]) -> JobRecord:
        return cls(
            id=row.id,
            account_id=row.account_id,
            created_by=row.created_by,
            type=row.type,
            params=dict(row.params),
            target=dict(row.target),
            total=row.total,
            created_at=row.created_at,
            expires_at=row.expires_at,
            cancelled_at=row.cancelled_at,
            finished_at=row.finished_at,
            counts=counts,
        )


@dataclass(frozen=True, slots=True)
class NewJob:
    """What :meth:`JobRepository.create` stores (the request, authorized and admitted)."""

    account_id: int | None
    created_by: int
    type: str
    params: Mapping[str, Any]
    target: Mapping[str, Any]
    now: int
    ttl_ms: int
    result_timeout_ms: int
    confirmation: str
    members: Sequence[JobMember]
    refusals: Sequence[Refusal]


def _ended_tenures(session: Session, members: Sequence[JobMember]) -> set[str]:
    """The members' VINs whose holding period is no longer the one authorized; locks the
    vehicles' rows against a concurrent revocation (PostgreSQL: FOR SHARE)."""
    wanted = {m.vin: m.tenure for m in members}
    current: dict[str, tuple[int, int | None]] = {}
    vins = list(wanted)
    for start in range(0, len(vins), 1000):
        rows = session.execute(
            select(VehicleRow.vin, VehicleRow.tenure, VehicleRow.revoked_at)
            .where(VehicleRow.vin.in_(vins[start : start + 1000]))
            .with_for_update(read=True)
        )
        current.update({vin: (tenure, revoked) for vin, tenure, revoked in rows})
    ended = set()
    for vin, tenure in wanted.items():
        found = current.get(vin)
        if (found is None and tenure != 1) or (
            found is not None and (found[0] != tenure or found[1] is not None)
        ):
            ended.add(vin)
    return ended


def _cancel_queued(session: Session, job_id: int, *, at: int, limit: int) -> int:
    """Cancel up to ``limit`` of the job's queued commands (each with its history row and
    event); how many."""
    queued = session.scalars(
        select(CommandRow)
        .where(CommandRow.job_id == job_id, CommandRow.status == CommandStatus.QUEUED)
        .order_by(CommandRow.id)
        .limit(limit)
        .with_for_update()
    ).all()
    status = transition(CommandStatus.QUEUED, CommandEvent.CANCEL_REQUESTED)
    for command in queued:
        command.status = status.value
        command.finished_at = at
        command.reason = "job_cancelled"
        CommandRepository._append(
            session, command.id, status, CommandEvent.CANCEL_REQUESTED.value, at,
            "job_cancelled", None,
        )  # fmt: skip
        session.flush()
        command_event(session, command, at=at)
    return len(queued)


#: how long an ``Idempotency-Key`` of a job is honoured (decision 0017)
JOB_KEY_TTL_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class JobKey:
    """A job's ``Idempotency-Key`` as stored: the hash of its first request, its job."""

    request_hash: str
    job_id: int


def remember_job_key(
    session: Session, *, scope: str, key: str, request_hash: str, job_id: int, now: int
) -> None:
    """Store a job's key in the job's transaction; keys past their 24 hours are deleted
    first (this one's, so it can be used again, and a bounded batch of others). A
    concurrent request with the same key makes one of the two transactions fail on the
    primary key: that caller then finds the winner's job (:meth:`JobRepository.job_key`)."""
    expired = CommandJobKeyRow.created_at < now - JOB_KEY_TTL_MS
    session.execute(
        delete(CommandJobKeyRow).where(
            CommandJobKeyRow.scope == scope, CommandJobKeyRow.key == key, expired
        )
    )
    old = select(CommandJobKeyRow.scope, CommandJobKeyRow.key).where(expired).limit(500)
    doomed = session.execute(old).all()
    for row_scope, row_key in doomed:
        session.execute(
            delete(CommandJobKeyRow).where(
                CommandJobKeyRow.scope == row_scope, CommandJobKeyRow.key == row_key
            )
        )
    session.add(
        CommandJobKeyRow(
            scope=scope, key=key, request_hash=request_hash, job_id=job_id, created_at=now
        )
    )


class JobRepository:
    """Jobs of a :class:`StateDatabase` (thread-safe; every method one transaction)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def job_key(self, scope: str, key: str, *, now: int) -> JobKey | None:
        """The job an ``Idempotency-Key`` made in ``scope`` within the last 24 hours."""
        with self._db.read() as session:
            row = session.get(CommandJobKeyRow, (scope, key))
            if row is None or row.created_at < now - JOB_KEY_TTL_MS:
                return None
            return JobKey(row.request_hash, row.job_id)

    def create(
        self, job: NewJob, *, on_created: Callable[[Session, JobRecord], object] | None = None
    ) -> tuple[JobRecord, list[CommandRecord]]:
        """Store the job, a ``queued`` command per member and the refusals, in one
        transaction (a member revoked meanwhile becomes a ``vehicle_revoked`` refusal);
        the job and its commands. ``on_created`` runs in the transaction (the audit
        entry)."""
        requested_by = f"user:{job.created_by}"
        digest = request_hash(
            type=job.type, params=job.params, ttl_ms=job.ttl_ms, requested_by=requested_by
        )
        with self._db.write() as session:
            ended = _ended_tenures(session, job.members)
            members = [m for m in job.members if m.vin not in ended]
            refusals = [*job.refusals, *(Refusal(vin, TENURE_ENDED) for vin in sorted(ended))]
            row = CommandJobRow(
                account_id=job.account_id,
                created_by=job.created_by,
                type=job.type,
                params=dict(job.params),
                target=dict(job.target),
                total=len(members) + len(refusals),
                created_at=job.now,
                expires_at=job.now + job.ttl_ms,
                finished_at=None if members else job.now,
            )
            session.add(row)
            session.flush()
            commands = [
                _add_queued(
                    session,
                    CommandRow(
                        id=str(uuid.uuid4()),
                        vin=m.vin,
                        tenure=m.tenure,
                        type=job.type,
                        params=dict(job.params),
                        idempotency_key=None,
                        request_hash=digest,
                        requested_by=requested_by,
                        created_at=job.now,
                        expires_at=job.now + job.ttl_ms,
                        result_timeout_ms=job.result_timeout_ms,
                        confirmation=job.confirmation,
                        job_id=row.id,
                    ),
                    flush=False,
                )
                for m in members
            ]
            session.add_all(
                CommandJobRefusalRow(job_id=row.id, vin=r.vin, reason=r.reason, detail=r.detail)
                for r in refusals
            )
            session.flush()
            record = JobRecord.from_row(row, job_counts(session, row.id))
            said = ["command_job.created"]
            if not members:  # every vehicle refused: finished at birth, and said so
                said.append("command_job.finished")
            for kind in said:
                publish(
                    session,
                    type=kind,
                    at=job.now,
                    account_id=row.account_id,
                    actor_user_id=row.created_by,
                    data={"job_id": row.id, "type": row.type, "counts": record.counts},
                )
            if on_created is not None:
                on_created(session, record)
            return record, [CommandRecord.from_row(c) for c in commands]

    def get(self, job_id: int) -> JobRecord | None:
        with self._db.read() as session:
            row = session.get(CommandJobRow, job_id)
            return None if row is None else JobRecord.from_row(row, job_counts(session, row.id))

    def page(
        self,
        *,
        account_id: int | None,
        created_by: int | None,
        everything: bool = False,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Newest first: every job (``everything``: administrators), else those of
        ``account_id`` or created by ``created_by`` (either may be None)."""
        criteria: list[ColumnElement[bool]] = []
        if not everything:
            either: list[ColumnElement[bool]] = []
            if account_id is not None:
                either.append(CommandJobRow.account_id == account_id)
            if created_by is not None:
                either.append(CommandJobRow.created_by == created_by)
            criteria.append(or_(*either) if either else CommandJobRow.id < 0)
        if before_id is not None:
            criteria.append(CommandJobRow.id < before_id)
        with self._db.read() as session:
            rows = session.scalars(
                select(CommandJobRow)
                .where(*criteria)
                .order_by(CommandJobRow.id.desc())
                .limit(limit)
            ).all()
            return [JobRecord.from_row(r, job_counts(session, r.id)) for r in rows]

    def running(self, account_id: int | None) -> int:
        """How many jobs of the account (None: of administrators) have not finished."""
        with self._db.read() as session:
            owner = (
                CommandJobRow.account_id.is_(None)
                if account_id is None
                else CommandJobRow.account_id == account_id
            )
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(CommandJobRow)
                    .where(owner, CommandJobRow.finished_at.is_(None))
                )
                or 0
            )

    def refusals(self, job_id: int, *, limit: int = 1000) -> list[Refusal]:
        with self._db.read() as session:
            rows = session.scalars(
                select(CommandJobRefusalRow)
                .where(CommandJobRefusalRow.job_id == job_id)
                .order_by(CommandJobRefusalRow.vin)
                .limit(limit)
            )
            return [Refusal(r.vin, r.reason, r.detail) for r in rows]

    def cancel(self, job_id: int, *, at: int, chunk: int = 500) -> tuple[JobRecord, int]:
        """Cancel every command of the job not sent yet (``queued``); those already sent
        or accepted run to their end. Marks the job cancelled; the job and how many
        commands were cancelled. In transactions of ``chunk`` commands, so a 10,000-vehicle
        job does not hold SQLite's write lock for seconds."""
        cancelled = 0
        while True:
            with self._db.write() as session:
                done = _cancel_queued(session, job_id, at=at, limit=chunk)
            cancelled += done
            if done < chunk:
                break
        with self._db.write() as session:
            job = session.scalar(
                select(CommandJobRow).where(CommandJobRow.id == job_id).with_for_update()
            )
            if job is None:
                raise KeyError(job_id)
            if job.cancelled_at is None and job.finished_at is None:
                job.cancelled_at = at
            session.flush()
            finish_job_if_done(session, job_id, at=at)
            session.flush()
            return JobRecord.from_row(job, job_counts(session, job_id)), cancelled

    def sweep_finished(self, *, at: int, limit: int = 100) -> int:
        """Finish running jobs none of whose commands is open (a command ended by a path
        that does not finish its job itself); how many."""
        with self._db.write() as session:
            running = session.scalars(
                select(CommandJobRow.id)
                .where(CommandJobRow.finished_at.is_(None))
                .order_by(CommandJobRow.id)
                .limit(limit)
            ).all()
            return sum(finish_job_if_done(session, job_id, at=at) for job_id in running)
