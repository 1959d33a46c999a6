"""The command repository: remote commands and their lifecycle, persisted.

Every method is one short transaction of its own and returns plain frozen records, never ORM
objects, so callers cannot touch the database behind the repository's back and records can
cross threads freely. The API is synchronous: callers on an event loop run it in a thread
(``asyncio.to_thread``) or accept the short block.

Status changes go only through :meth:`CommandRepository.apply`, which asks
``gateway.core.lifecycle.transition`` first, so the database can never hold a transition
the state machine forbids, and writes the new status and its history row in one transaction.

Holding periods: every command belongs to the VIN's holding period (tenure) it was made
in; a vehicle's command list and its idempotency keys are per period, so a later holder of
the VIN neither sees nor collides with an earlier holder's. :meth:`CommandRepository.create`
refuses a period that has ended (the vehicle was revoked, or provisioned anew, meanwhile),
and the queue of commands waiting for a vehicle holds only its current period's, so a
command can never be delivered to the next holder's unit. :func:`cancel_open_commands`
ends a period's open commands in the revocation's transaction.

Idempotency: a request may carry a key. The first request with a given (vin, tenure, key)
creates the command; a retry with the same request gets that command back unchanged (``created`` is
False), even if two retries race (the UNIQUE constraint decides, the loser re-reads); the
same key with a different request is an :class:`IdempotencyConflict`, because silently
returning a command the caller did not ask for would be worse than an error. "The same
request" means the same type, parameters, time to live and requester (:func:`request_hash`);
the creation time is not part of it, so a retry minutes later still matches.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session

from gateway.core.lifecycle import (
    CommandEvent,
    CommandStatus,
    IllegalTransition,
    is_terminal,
    transition,
)
from gateway.errors import GatewayError
from gateway.statedb.database import StateDatabase, WriteScope
from gateway.statedb.events import publish
from gateway.statedb.models import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    CommandJobRefusalRow,
    CommandJobRow,
    CommandRow,
    CommandTransitionRow,
    VehicleRow,
    VehicleTenureRow,
)
from gateway.statedb.prepared import Prepared

__all__ = [
    "CommandNotFound",
    "CommandRecord",
    "CommandRepository",
    "ConfirmationState",
    "IdempotencyConflict",
    "TenureEnded",
    "TransitionRecord",
    "cancel_open_commands",
    "command_event",
    "finish_job_if_done",
    "job_counts",
    "request_hash",
    "user_of",
]

logger = logging.getLogger(__name__)


class ConfirmationState(enum.StrEnum):
    """Whether later telemetry showed the vehicle in the state a command promised.

    A separate fact from the status (see ``gateway.core.lifecycle``): a command starts
    ``pending`` if its type has an expected state, ``not_applicable`` otherwise.
    """

    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNCONFIRMED = "unconfirmed"
    NOT_APPLICABLE = "not_applicable"


_CONFIRMATIONS = frozenset(state.value for state in ConfirmationState)
#: the answers by which a unit takes a command on (``accepted``, or a final answer straight
#: away); the first of them sets ``unit_accepted_at``
_UNIT_ACCEPTING_EVENTS = frozenset(
    {CommandEvent.UNIT_ACCEPTED, CommandEvent.UNIT_SUCCEEDED, CommandEvent.UNIT_FAILED}
)
_INITIAL_CONFIRMATIONS = frozenset(
    {ConfirmationState.PENDING.value, ConfirmationState.NOT_APPLICABLE.value}
)


def _check_new_command(
    ttl_ms: int, result_timeout_ms: int, idempotency_key: str | None, confirmation: str
) -> None:
    """``ValueError`` for an argument of :meth:`CommandRepository.create` no caller should
    pass."""
    if ttl_ms <= 0 or result_timeout_ms <= 0:
        raise ValueError(
            f"ttl_ms and result_timeout_ms must be positive, got {ttl_ms}, {result_timeout_ms}"
        )
    if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH):
        raise ValueError(
            f"an idempotency key has 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters, "
            f"got {len(idempotency_key)}"
        )
    if confirmation not in _INITIAL_CONFIRMATIONS:
        raise ValueError(
            f"a new command's confirmation is 'pending' or 'not_applicable', got {confirmation!r}"
        )


def _add_queued(session: Session, row: CommandRow, *, flush: bool = True) -> CommandRow:
    """Add a new command as an ORM row (``row``: its request; the rest is what every new
    command starts with) and its first history row (``queued``, no event): a job's many
    commands. A single command is written by :func:`_insert_new` instead."""
    row.status = CommandStatus.QUEUED.value
    row.sent_at = row.accepted_at = row.finished_at = None
    row.confirmed_at = row.unit_accepted_at = None
    row.reason = row.detail = None
    session.add(row)
    session.add(
        CommandTransitionRow(
            command_id=row.id,
            seq=1,
            status=CommandStatus.QUEUED.value,
            event=None,
            at=row.created_at,
            reason=None,
            detail=None,
        )
    )
    if flush:
        session.flush()
    return row


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command as stored (times are epoch milliseconds)."""

    id: str
    vin: str
    #: the VIN's holding period the command was made in
    tenure: int
    type: str
    params: dict[str, Any]
    status: CommandStatus
    idempotency_key: str | None
    requested_by: str | None
    created_at: int
    expires_at: int
    result_timeout_ms: int
    sent_at: int | None
    accepted_at: int | None
    finished_at: int | None
    reason: str | None
    detail: str | None
    confirmation: str
    confirmed_at: int | None
    #: the unit's clock when it accepted (its ``accepted`` answer's ``ts``, or that of its
    #: final answer if it sent no ``accepted``); None before that, or for older commands
    unit_accepted_at: int | None = None
    #: the bulk command it belongs to (None: a single command)
    job_id: int | None = None

    @classmethod
    def from_row(cls, row: CommandRow) -> CommandRecord:
        return cls(
            id=row.id,
            vin=row.vin,
            tenure=row.tenure,
            type=row.type,
            params=dict(row.params),
            status=CommandStatus(row.status),
            idempotency_key=row.idempotency_key,
            requested_by=row.requested_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            result_timeout_ms=row.result_timeout_ms,
            sent_at=row.sent_at,
            accepted_at=row.accepted_at,
            finished_at=row.finished_at,
            reason=row.reason,
            detail=row.detail,
            confirmation=row.confirmation,
            confirmed_at=row.confirmed_at,
            unit_accepted_at=row.unit_accepted_at,
            job_id=row.job_id,
        )


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One step of a command's history; ``event`` is None for the initial ``queued`` row."""

    command_id: str
    seq: int
    status: CommandStatus
    event: str | None
    at: int
    reason: str | None
    detail: str | None

    @classmethod
    def from_row(cls, row: CommandTransitionRow) -> TransitionRecord:
        return cls(
            command_id=row.command_id,
            seq=row.seq,
            status=CommandStatus(row.status),
            event=row.event,
            at=row.at,
            reason=row.reason,
            detail=row.detail,
        )


class IdempotencyConflict(GatewayError):
    """The (vin, idempotency key) was already used for a different request."""

    def __init__(self, vin: str, idempotency_key: str, command_id: str) -> None:
        self.vin = vin
        self.idempotency_key = idempotency_key
        self.command_id = command_id
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for vehicle {vin} with a "
            f"different request (command {command_id}); repeat that request unchanged, or use "
            "a new key for a new request"
        )


class TenureEnded(GatewayError):
    """The holding period a command was to be made in is over: the vehicle was revoked (or
    provisioned anew) between the request's authorization and the command's creation."""

    def __init__(self, vin: str, tenure: int) -> None:
        self.vin = vin
        self.tenure = tenure
        super().__init__(
            f"vehicle {vin} is no longer held as it was when the request was authorized "
            f"(holding period {tenure} has ended); nothing was created"
        )


class CommandNotFound(GatewayError):
    """No command has this id."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        super().__init__(f"no command with id {command_id!r}")


def request_hash(
    *, type: str, params: Mapping[str, Any], ttl_ms: int, requested_by: str | None
) -> str:
    """SHA-256 (hex) of a request's canonical JSON: what "the same request" means.

    Keys are sorted at every level, so parameter order does not matter. The server-side
    settings of a command (result timeout, confirmation) are left out: a configuration change
    between a request and its retry must not turn the retry into a conflict.
    """
    canonical = orjson.dumps(
        {"type": type, "params": dict(params), "ttl_ms": ttl_ms, "requested_by": requested_by},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()


# --- the command path's statements ------------------------------------------------------------
#
# Core statements on the session's connection, built once: the command writer runs them for
# every command (created and sent, accepted, succeeded), and the ORM's unit of work, its
# identity map and statement building per call were most of the API's CPU per command
# (decision 0036). The ORM models stay the schema; jobs and revocations keep their ORM code.

_COMMANDS = cast(Table, CommandRow.__table__)
_TRANSITIONS = cast(Table, CommandTransitionRow.__table__)
#: the columns of a :class:`CommandRecord`, in the order of its fields
_RECORD_COLUMNS = tuple(
    _COMMANDS.c[name]
    for name in (
        "id", "vin", "tenure", "type", "params", "status", "idempotency_key", "requested_by",
        "created_at", "expires_at", "result_timeout_ms", "sent_at", "accepted_at",
        "finished_at", "reason", "detail", "confirmation", "confirmed_at", "unit_accepted_at",
        "job_id",
    )
)  # fmt: skip
#: what :meth:`CommandRepository.apply` and its kin may change of a command
_CHANGEABLE = (
    "status", "sent_at", "accepted_at", "finished_at", "reason", "detail", "confirmation",
    "confirmed_at", "unit_accepted_at",
)  # fmt: skip
_INSERT_COMMAND = Prepared(insert(_COMMANDS))
_INSERT_TRANSITION = Prepared(insert(_TRANSITIONS))
#: the SET clause is the parameters' keys (the changeable columns, always all of them)
_UPDATE_COMMAND = Prepared(update(_COMMANDS).where(_COMMANDS.c.id == bindparam("command_id")))
#: a command, locked until the transaction ends (PostgreSQL: FOR UPDATE; SQLite: the
#: write transaction holds the database), and the last seq of its history
_LOCKED = Prepared(
    select(
        *_RECORD_COLUMNS,
        select(func.max(_TRANSITIONS.c.seq))
        .where(_TRANSITIONS.c.command_id == _COMMANDS.c.id)
        .scalar_subquery(),
    )
    .where(_COMMANDS.c.id == bindparam("command_id"))
    .with_for_update(of=_COMMANDS)
)
_BY_ID = Prepared(select(*_RECORD_COLUMNS).where(_COMMANDS.c.id == bindparam("command_id")))
#: a command's history after a seq, in order
_HISTORY = Prepared(
    select(
        _TRANSITIONS.c.seq, _TRANSITIONS.c.status, _TRANSITIONS.c.event, _TRANSITIONS.c.at,
        _TRANSITIONS.c.reason, _TRANSITIONS.c.detail,
    )
    .where(
        _TRANSITIONS.c.command_id == bindparam("command_id"),
        _TRANSITIONS.c.seq > bindparam("after_seq"),
    )
    .order_by(_TRANSITIONS.c.seq)
)  # fmt: skip
_DUE_FOR_EXPIRY = (
    select(*_RECORD_COLUMNS)
    .where(
        _COMMANDS.c.status.in_((CommandStatus.QUEUED.value, CommandStatus.SENT.value)),
        _COMMANDS.c.expires_at <= bindparam("now"),
    )
    .order_by(_COMMANDS.c.expires_at, _COMMANDS.c.id)
)
_DUE_FOR_TIMEOUT = (
    select(*_RECORD_COLUMNS)
    .where(
        _COMMANDS.c.status == CommandStatus.ACCEPTED.value,
        _COMMANDS.c.accepted_at + _COMMANDS.c.result_timeout_ms <= bindparam("now"),
    )
    .order_by(_COMMANDS.c.accepted_at, _COMMANDS.c.id)
)
_AWAITING_CONFIRMATION = (
    select(*_RECORD_COLUMNS)
    .where(
        _COMMANDS.c.status == CommandStatus.SUCCEEDED.value,
        _COMMANDS.c.confirmation == ConfirmationState.PENDING.value,
    )
    .order_by(_COMMANDS.c.finished_at, _COMMANDS.c.id)
    .limit(bindparam("limit"))
)
#: a command by its idempotency key, and the hash of its request
_BY_KEY = select(*_RECORD_COLUMNS, _COMMANDS.c.request_hash).where(
    _COMMANDS.c.vin == bindparam("vin"),
    _COMMANDS.c.tenure == bindparam("tenure"),
    _COMMANDS.c.idempotency_key == bindparam("idempotency_key"),
)
_BY_KEY_OF = Prepared(_BY_KEY.where(_COMMANDS.c.requested_by == bindparam("requested_by")))
_BY_KEY_OF_NOBODY = Prepared(_BY_KEY.where(_COMMANDS.c.requested_by.is_(None)))
#: the vehicle's current period, locked against a concurrent revocation (FOR SHARE)
_CURRENT_TENURE = Prepared(
    select(VehicleRow.tenure, VehicleRow.revoked_at)
    .where(VehicleRow.vin == bindparam("vin"))
    .with_for_update(read=True)
)
_TENURE_ACCOUNT = Prepared(
    select(VehicleTenureRow.account_id).where(
        VehicleTenureRow.vin == bindparam("vin"), VehicleTenureRow.number == bindparam("tenure")
    )
)


#: (vin, period) -> account of the periods found, per database (its engine): see
#: :func:`command_event`
_TENURE_ACCOUNTS: weakref.WeakKeyDictionary[object, dict[tuple[str, int], int]] = (
    weakref.WeakKeyDictionary()
)
_TENURE_ACCOUNTS_KEPT = 100_000


def _record(values: Sequence[Any]) -> CommandRecord:
    """A :class:`CommandRecord` of a row of :data:`_RECORD_COLUMNS` (more columns after
    them are left out)."""
    return CommandRecord(
        values[0], values[1], values[2], values[3], dict(values[4]), CommandStatus(values[5]),
        *values[6:20],
    )  # fmt: skip


def _insert_new(connection: Connection, new: CommandRecord, request_hash: str) -> None:
    """Insert ``new`` (``queued``, or ``sent`` with its ``sent_at``) and its history:
    ``queued`` at seq 1 and, if sent, ``published`` at seq 2."""
    values = {column.name: getattr(new, column.name) for column in _RECORD_COLUMNS}
    values["status"] = new.status.value
    _INSERT_COMMAND.execute(connection, {**values, "request_hash": request_hash}).close()
    history = [
        {"command_id": new.id, "seq": 1, "status": CommandStatus.QUEUED.value, "event": None,
         "at": new.created_at, "reason": None, "detail": None}
    ]  # fmt: skip
    if new.status is CommandStatus.SENT:
        history.append(
            {"command_id": new.id, "seq": 2, "status": new.status.value,
             "event": CommandEvent.PUBLISHED.value, "at": new.sent_at, "reason": None,
             "detail": None}
        )  # fmt: skip
    _INSERT_TRANSITION.executemany(connection, history)


def _by_key(
    connection: Connection, vin: str, tenure: int, requested_by: str | None, key: str
) -> tuple[CommandRecord, str] | None:
    """The command of this idempotency key and its request's hash: keys are per
    requesting user (decision 0023), so another user of the vehicle cannot use one up."""
    values = {"vin": vin, "tenure": tenure, "idempotency_key": key}
    if requested_by is None:
        found = _BY_KEY_OF_NOBODY.first(connection, values)
    else:
        found = _BY_KEY_OF.first(connection, {**values, "requested_by": requested_by})
    return None if found is None else (_record(found), found[20])


def _replay(existing: CommandRecord, its_hash: str, digest: str) -> CommandRecord:
    """The earlier command of a repeated request; :class:`IdempotencyConflict` if the
    request differs."""
    if its_hash != digest:
        assert existing.idempotency_key is not None
        raise IdempotencyConflict(existing.vin, existing.idempotency_key, existing.id)
    return existing


def _locked(connection: Connection, command_id: str) -> tuple[CommandRecord, int]:
    """The command (locked, see :data:`_LOCKED`) and the last seq of its history;
    :class:`CommandNotFound` if there is none."""
    found = _LOCKED.first(connection, {"command_id": command_id})
    if found is None:
        raise CommandNotFound(command_id)
    return _record(found), int(found[20] or 0)


def _store_change(
    connection: Connection, changed: CommandRecord, seq: int, event: str, at: int,
    reason: str | None, detail: str | None,
) -> None:  # fmt: skip
    """Write ``changed`` (its changeable columns) and, with ``seq``, its history row."""
    values = {name: getattr(changed, name) for name in _CHANGEABLE}
    values["status"] = changed.status.value
    _UPDATE_COMMAND.execute(connection, {**values, "command_id": changed.id}).close()
    if seq:
        _INSERT_TRANSITION.execute(
            connection,
            {"command_id": changed.id, "seq": seq, "status": changed.status.value,
             "event": event, "at": at, "reason": reason, "detail": detail},
        ).close()  # fmt: skip


class CommandRepository:
    """Commands and their transitions in a :class:`StateDatabase` (thread-safe)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    @property
    def database(self) -> StateDatabase:
        return self._db

    # --- creating ---------------------------------------------------------------------------

    def create(
        self,
        *,
        vin: str,
        type: str,
        params: Mapping[str, Any],
        now: int,
        ttl_ms: int,
        result_timeout_ms: int,
        tenure: int = 1,
        idempotency_key: str | None = None,
        requested_by: str | None = None,
        confirmation: str = ConfirmationState.PENDING,
        on_created: Callable[[WriteScope, CommandRecord], object] | None = None,
        sent_at: int | None = None,
    ) -> tuple[CommandRecord, bool]:
        """Store a new ``queued`` command (and its first transition row); with ``sent_at``
        (published right after the commit), ``sent`` at once (:func:`_mark_published`).

        ``on_created`` runs inside the same transaction once the command exists (not for a
        replay): its writes (the audit entry) commit together with the command.

        ``tenure`` is the vehicle's holding period the request was authorized for. When the
        VIN is provisioned (has a ``vehicles`` row), that period must still be its current,
        active one, checked in the same transaction with the vehicle row locked against a
        concurrent revocation (PostgreSQL: FOR SHARE; SQLite: the write lock); else
        :class:`TenureEnded`. An unprovisioned VIN (an administrator's command) takes
        period 1.

        Returns ``(command, created)``. ``created`` is False when an earlier request with the
        same (vin, tenure, idempotency_key) and the same body exists: that command is
        returned unchanged, whatever its status now. Raises :class:`IdempotencyConflict`
        when the key was used with a different body, and ``ValueError`` for an argument no
        caller should pass (non-positive durations, an empty or over-long key, an unknown
        confirmation).
        """
        _check_new_command(ttl_ms, result_timeout_ms, idempotency_key, confirmation)
        params = dict(params)
        digest = request_hash(type=type, params=params, ttl_ms=ttl_ms, requested_by=requested_by)
        try:
            with self._db.write_transaction() as tx:
                connection = tx.connection()
                _require_current_tenure(connection, vin, tenure)
                if idempotency_key is not None:
                    existing = _by_key(connection, vin, tenure, requested_by, idempotency_key)
                    if existing is not None:
                        return _replay(*existing, digest), False
                queued = CommandStatus.QUEUED
                sent = None if sent_at is None else transition(queued, CommandEvent.PUBLISHED)
                record = CommandRecord(
                    id=str(uuid.uuid4()), vin=vin, tenure=tenure, type=type, params=params,
                    status=sent or queued, idempotency_key=idempotency_key,
                    requested_by=requested_by, created_at=now, expires_at=now + ttl_ms,
                    result_timeout_ms=result_timeout_ms, sent_at=sent_at, accepted_at=None,
                    finished_at=None, reason=None, detail=None, confirmation=str(confirmation),
                    confirmed_at=None,
                )  # fmt: skip
                _insert_new(connection, record, digest)
                command_event(tx, record, at=now if sent_at is None else sent_at)
                if on_created is not None:
                    on_created(tx, record)
        except IntegrityError:
            # PostgreSQL: a concurrent create with the same key committed between our read
            # and our insert (on SQLite, BEGIN IMMEDIATE serialises creates, so the read finds
            # it). The constraint decided; the earlier command is the answer.
            if idempotency_key is None:
                raise
            earlier = self._replay_after_race(vin, tenure, requested_by, idempotency_key, digest)
            if earlier is None:
                raise
            return earlier, False
        return record, True

    def _replay_after_race(
        self, vin: str, tenure: int, requested_by: str | None, idempotency_key: str, digest: str
    ) -> CommandRecord | None:
        """The command a concurrent create with the same key stored (see :meth:`create`),
        None if there is none."""
        with self._db.read() as session:
            existing = _by_key(session.connection(), vin, tenure, requested_by, idempotency_key)
        if existing is None:
            return None
        logger.debug("command %s: concurrent create with the same idempotency key", existing[0].id)
        return _replay(*existing, digest)

    # --- reading ----------------------------------------------------------------------------

    def get(self, command_id: str) -> CommandRecord | None:
        with self._db.read_connection() as connection:
            found = _BY_ID.first(connection, {"command_id": command_id})
        return None if found is None else _record(found)

    def list_for_vehicle(
        self,
        vin: str,
        *,
        tenure: int | None = None,
        limit: int = 50,
        before_created_at: int | None = None,
        before_id: str | None = None,
    ) -> list[CommandRecord]:
        """A vehicle's commands of holding period ``tenure`` (None: of every period, for
        administrators), newest first (by ``created_at``, then id); page on with the last
        one's ``created_at`` and id (without the id, commands created in the same
        millisecond as the last one are skipped)."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        criteria: list[ColumnElement[bool]] = [CommandRow.vin == vin]
        if tenure is not None:
            criteria.append(CommandRow.tenure == tenure)
        if before_created_at is not None and before_id is not None:
            criteria.append(
                or_(
                    CommandRow.created_at < before_created_at,
                    and_(CommandRow.created_at == before_created_at, CommandRow.id < before_id),
                )
            )
        elif before_created_at is not None:
            criteria.append(CommandRow.created_at < before_created_at)
        return self._records(
            *criteria,
            order_by=(CommandRow.created_at.desc(), CommandRow.id.desc()),
            limit=limit,
        )

    def queued(self) -> list[CommandRecord]:
        """Every command waiting to be sent, oldest first (re-dispatched after a reconnect);
        only those of their vehicle's current, active holding period (see the module
        docstring)."""
        return self._queued(CommandRow.status == CommandStatus.QUEUED.value)

    def queued_for_vehicle(self, vin: str) -> list[CommandRecord]:
        """Commands waiting to be sent to ``vin`` in its current, active holding period,
        oldest first (the order to send them in)."""
        return self._queued(CommandRow.vin == vin, CommandRow.status == CommandStatus.QUEUED.value)

    def _queued(self, *criteria: ColumnElement[bool]) -> list[CommandRecord]:
        query = (
            _of_current_tenure(select(*_RECORD_COLUMNS))
            .where(*criteria)
            .order_by(CommandRow.created_at, CommandRow.id)
        )
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(query)]

    def transitions(self, command_id: str, *, after_seq: int = 0) -> list[TransitionRecord]:
        """The command's history after ``after_seq``, in order (empty for an unknown id)."""
        values = {"command_id": command_id, "after_seq": after_seq}
        with self._db.read_connection() as connection:
            return [
                TransitionRecord(command_id, seq, CommandStatus(status), event, at, reason, detail)
                for seq, status, event, at, reason, detail in _HISTORY.all(connection, values)
            ]

    def due_for_expiry(self, now: int) -> list[CommandRecord]:
        """Queued or sent commands whose expiry time has come (``expires_at <= now``).

        Accepted commands are not here: once the unit accepted, the result timeout bounds
        the wait instead (see the lifecycle).
        """
        # the timers' reads (every tick, on the loop): statements built once
        return self._run(_DUE_FOR_EXPIRY, {"now": now})

    def due_for_timeout(self, now: int) -> list[CommandRecord]:
        """Accepted commands without a final answer in time (``accepted_at + timeout <= now``)."""
        return self._run(_DUE_FOR_TIMEOUT, {"now": now})

    def awaiting_confirmation(self, *, limit: int = 1000) -> list[CommandRecord]:
        """Succeeded commands whose effect telemetry has not yet confirmed, oldest first."""
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        return self._run(_AWAITING_CONFIRMATION, {"limit": limit})

    def _run(self, query: Select[Any], values: dict[str, Any]) -> list[CommandRecord]:
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(query, values)]

    def _records(
        self,
        *criteria: ColumnElement[bool],
        order_by: tuple[ColumnElement[Any] | InstrumentedAttribute[Any], ...],
        limit: int | None = None,
    ) -> list[CommandRecord]:
        query = select(*_RECORD_COLUMNS).where(*criteria).order_by(*order_by).limit(limit)
        with self._db.read_connection() as connection:
            return [_record(row) for row in connection.execute(query)]

    # --- changing ---------------------------------------------------------------------------

    def apply(
        self,
        command_id: str,
        event: CommandEvent,
        *,
        at: int,
        reason: str | None = None,
        detail: str | None = None,
        unit_ts: int | None = None,
    ) -> CommandRecord:
        """Apply ``event`` at time ``at``: new status, its timestamp, one history row.

        The row is locked while the transition is decided (PostgreSQL: SELECT ... FOR UPDATE;
        SQLite: the write transaction holds the database lock), so two answers racing for
        the same command are applied one after the other, and the second is judged against
        the first's outcome. Sets ``sent_at`` on ``sent``, ``accepted_at`` on ``accepted`` and
        ``finished_at`` on a terminal status; ``reason``/``detail`` replace the stored ones
        when given. ``unit_ts`` (the unit's clock in its answer) sets ``unit_accepted_at``
        on the unit's first non-rejecting answer. Raises :class:`IllegalTransition` (logged
        as a warning, nothing written) and :class:`CommandNotFound`.
        """
        event = CommandEvent(event)
        with self._db.write_transaction() as tx:
            connection = tx.connection()
            current, last_seq = _locked(connection, command_id)
            try:
                status = transition(current.status, event)
            except IllegalTransition as exc:
                logger.warning("command %s: %s; nothing recorded", command_id, exc)
                raise
            changed = dataclasses.replace(
                current,
                status=status,
                sent_at=at if status is CommandStatus.SENT else current.sent_at,
                accepted_at=at if status is CommandStatus.ACCEPTED else current.accepted_at,
                finished_at=at if is_terminal(status) else current.finished_at,
                reason=current.reason if reason is None else reason,
                detail=current.detail if detail is None else detail,
            )
            if (
                unit_ts is not None
                and current.unit_accepted_at is None
                and event in _UNIT_ACCEPTING_EVENTS
            ):
                changed = dataclasses.replace(changed, unit_accepted_at=unit_ts)
            _store_change(connection, changed, last_seq + 1, event.value, at, reason, detail)
            command_event(tx, changed, at=at)
            if changed.job_id is not None and is_terminal(status):
                finish_job_if_done(tx.session, changed.job_id, at=at)
            return changed

    def note(
        self,
        command_id: str,
        event: str,
        *,
        at: int,
        reason: str | None = None,
        detail: str | None = None,
    ) -> CommandRecord:
        """Append a history row that changes nothing: the command keeps its status (e.g. a
        ``late_<status>`` event from :func:`~gateway.core.lifecycle.late_event`, an answer
        that came after the command had ended). Raises :class:`CommandNotFound`."""
        with self._db.write_transaction() as tx:
            connection = tx.connection()
            current, last_seq = _locked(connection, command_id)
            _INSERT_TRANSITION.execute(
                connection,
                {"command_id": command_id, "seq": last_seq + 1, "status": current.status.value,
                 "event": event, "at": at, "reason": reason, "detail": detail},
            ).close()  # fmt: skip
            return current

    @staticmethod
    def _append(
        session: Session,
        command_id: str,
        status: CommandStatus,
        event: str,
        at: int,
        reason: str | None,
        detail: str | None,
    ) -> None:
        last_seq = session.scalar(
            select(func.max(CommandTransitionRow.seq)).where(
                CommandTransitionRow.command_id == command_id
            )
        )
        session.add(
            CommandTransitionRow(
                command_id=command_id,
                seq=(last_seq or 0) + 1,
                status=status.value,
                event=event,
                at=at,
                reason=reason,
                detail=detail,
            )
        )

    def set_confirmation(
        self,
        command_id: str,
        *,
        confirmation: str,
        confirmed_at: int | None,
        at: int | None = None,
    ) -> CommandRecord:
        """Record what telemetry showed (``confirmed``, ``unconfirmed``, ...) and when;
        ``at`` (default: ``confirmed_at``) is the time of its ``command.updated`` event."""
        if confirmation not in _CONFIRMATIONS:
            raise ValueError(
                f"confirmation must be one of {', '.join(ConfirmationState)}, got {confirmation!r}"
            )
        with self._db.write_transaction() as tx:
            connection = tx.connection()
            current, _ = _locked(connection, command_id)
            changed = dataclasses.replace(
                current, confirmation=str(confirmation), confirmed_at=confirmed_at
            )
            _store_change(connection, changed, 0, "", 0, None, None)
            when = at if at is not None else confirmed_at
            command_event(tx, changed, at=when if when is not None else changed.finished_at or 0)
            return changed


# --- holding periods (inside a caller's transaction) -----------------------------------------

#: the reason recorded on a command cancelled by its vehicle's revocation
REVOKED_REASON = "vehicle_revoked"

_OPEN = (CommandStatus.QUEUED.value, CommandStatus.SENT.value, CommandStatus.ACCEPTED.value)


def _of_current_tenure(query: Select[Any]) -> Select[Any]:
    """Only commands of their vehicle's current, active holding period (or of an
    unprovisioned VIN, which has no period to end)."""
    return query.outerjoin(VehicleRow, VehicleRow.vin == CommandRow.vin).where(
        or_(
            VehicleRow.vin.is_(None),
            and_(VehicleRow.tenure == CommandRow.tenure, VehicleRow.revoked_at.is_(None)),
        )
    )


def _require_current_tenure(connection: Connection, vin: str, tenure: int) -> None:
    """:class:`TenureEnded` unless ``tenure`` is the current, active period of ``vin`` (or
    the VIN is not provisioned and ``tenure`` is 1). Locks the vehicle row against a
    concurrent revocation until the caller's transaction ends."""
    vehicle = _CURRENT_TENURE.first(connection, {"vin": vin})
    if vehicle is None:
        if tenure != 1:
            raise TenureEnded(vin, tenure)
        return
    current, revoked_at = vehicle
    if current != tenure or revoked_at is not None:
        raise TenureEnded(vin, tenure)


def cancel_open_commands(session: Session, vin: str, *, at: int, detail: str) -> int:
    """Cancel every open command (queued, sent, accepted) of ``vin``, whatever its period,
    with the reason ``vehicle_revoked``, in the caller's transaction (the revocation's);
    how many. Each gets its transition row, as :meth:`CommandRepository.apply` writes."""
    rows = session.scalars(
        select(CommandRow)
        .where(CommandRow.vin == vin, CommandRow.status.in_(_OPEN))
        .order_by(CommandRow.created_at, CommandRow.id)
        .with_for_update()
    ).all()
    for row in rows:
        status = transition(CommandStatus(row.status), CommandEvent.VEHICLE_REVOKED)
        row.status = status.value
        row.finished_at = at
        row.reason = REVOKED_REASON
        row.detail = detail
        if row.confirmation == ConfirmationState.PENDING.value:
            row.confirmation = ConfirmationState.NOT_APPLICABLE.value
        last_seq = session.scalar(
            select(func.max(CommandTransitionRow.seq)).where(
                CommandTransitionRow.command_id == row.id
            )
        )
        session.add(
            CommandTransitionRow(
                command_id=row.id,
                seq=(last_seq or 0) + 1,
                status=status.value,
                event=CommandEvent.VEHICLE_REVOKED.value,
                at=at,
                reason=REVOKED_REASON,
                detail=detail,
            )
        )
        session.flush()
        command_event(session, row, at=at)
    session.flush()
    for job_id in sorted({row.job_id for row in rows if row.job_id is not None}):
        finish_job_if_done(session, job_id, at=at)
    return len(rows)


# --- notifications and jobs (inside a caller's transaction) ----------------------------------


def user_of(requested_by: str | None) -> int | None:
    """The user id of a ``requested_by`` of the form ``user:<id>`` (None otherwise)."""
    if requested_by is None or not requested_by.startswith("user:"):
        return None
    number = requested_by.removeprefix("user:")
    return int(number) if number.isdigit() else None


class _CommandFacts(Protocol):
    """What :func:`command_event` reads of a command: a :class:`CommandRecord` or a
    :class:`CommandRow` (jobs and revocations)."""

    @property
    def id(self) -> str: ...
    @property
    def vin(self) -> str: ...
    @property
    def tenure(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def confirmation(self) -> str: ...
    @property
    def job_id(self) -> int | None: ...
    @property
    def requested_by(self) -> str | None: ...


def command_event(session: WriteScope, row: _CommandFacts, *, at: int) -> None:
    """Publish ``command.updated`` for ``row`` as it now stands, scoped to the account that
    held the vehicle in the command's holding period (never a later holder's). A
    period's account never changes (its row is never updated or deleted), so once found it
    is kept for the database's life (the command writer publishes three events per
    command, most in a transaction of their own; decision 0036); a period not found (an
    unprovisioned VIN) is read again per transaction."""
    accounts: dict[tuple[str, int], int | None] = session.info.setdefault("tenure_accounts", {})
    kept = _TENURE_ACCOUNTS.setdefault(session.get_bind(), {})
    period = (row.vin, row.tenure)
    if period not in accounts:
        account = kept.get(period)
        if account is None:
            account = _TENURE_ACCOUNT.scalar(
                session.connection(), {"vin": row.vin, "tenure": row.tenure}
            )
            if account is not None and len(kept) < _TENURE_ACCOUNTS_KEPT:
                kept[period] = account
        accounts[period] = account
    publish(
        session,
        type="command.updated",
        at=at,
        account_id=accounts[period],
        actor_user_id=user_of(row.requested_by),
        data={
            "command_id": row.id,
            "vin": row.vin,
            "type": row.type,
            "status": str(row.status),
            "reason": row.reason,
            "confirmation": row.confirmation,
            "job_id": row.job_id,
        },
    )


def job_counts(session: Session, job_id: int) -> dict[str, int]:
    """How many of a job's vehicles stand where: every command status, plus ``refused``."""
    counts = {status.value: 0 for status in CommandStatus}
    rows = session.execute(
        select(CommandRow.status, func.count())
        .where(CommandRow.job_id == job_id)
        .group_by(CommandRow.status)
    )
    for status, n in rows:
        counts[status] = int(n)
    counts["refused"] = int(
        session.scalar(
            select(func.count())
            .select_from(CommandJobRefusalRow)
            .where(CommandJobRefusalRow.job_id == job_id)
        )
        or 0
    )
    return counts


def finish_job_if_done(session: Session, job_id: int, *, at: int) -> bool:
    """Mark the job finished (and publish ``command_job.finished``) when none of its
    commands is open any more; whether it was. Locks the job row first (always after the
    commands' rows: one lock order), so the last two commands of a job finishing at once
    on PostgreSQL cannot both see the other still open."""
    job = session.scalar(select(CommandJobRow).where(CommandJobRow.id == job_id).with_for_update())
    if job is None or job.finished_at is not None:
        return False
    still_open = session.scalar(
        select(func.count())
        .select_from(CommandRow)
        .where(CommandRow.job_id == job_id, CommandRow.status.in_(_OPEN))
    )
    if still_open:
        return False
    job.finished_at = at
    session.flush()
    publish(
        session,
        type="command_job.finished",
        at=at,
        account_id=job.account_id,
        actor_user_id=job.created_by,
        data={"job_id": job.id, "type": job.type, "counts": job_counts(session, job.id)},
    )
    return True
