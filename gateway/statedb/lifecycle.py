"""The vehicle lifecycle registry (issue 16): registration by the maker with a pairing
code, claims with the code, ownership transfers, service, decommissioning, and every
change's history (docs/decisions/0021-vehicle-lifecycle.md).

Each method is one write transaction that locks the VIN's lifecycle row, then its vehicle
row, asks :func:`gateway.core.vehicle_lifecycle.decide` and records the change in
``vehicle_lifecycle_events``; holding periods start and end through
:func:`gateway.statedb.accounts.start_tenure` and :func:`~gateway.statedb.accounts.end_tenure`,
the same code provisioning and revocation use. Refusals raise
:class:`~gateway.statedb.lifecycle_log.LifecycleRefused`. Pairing codes arrive here only as
hashes (:func:`pairing_code_hash`).

Errors::

    GatewayError
     +-- LifecycleRefused     the state machine refuses the change (its reason code)
     +-- NotFound             (accounts) an unknown transfer or account
     +-- TransferClosed       the transfer can no longer be accepted, declined or cancelled
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.core.lockout import lockout_ms
from gateway.core.vehicle_lifecycle import (
    PAIRING_LOCKOUT_AFTER,
    PAIRING_MAX_LOCKOUT_S,
    PAIRING_VIN_LOCKOUT_AFTER,
    LifecycleEvent,
    Refusal,
    VehicleState,
    decide,
)
from gateway.errors import GatewayError
from gateway.statedb.accounts import (
    NotFound,
    VehicleRecord,
    _locked_vehicle,
    _require,
    end_tenure,
    normalize_email,
    start_tenure,
)
from gateway.statedb.database import StateDatabase
from gateway.statedb.lifecycle_log import allowed, lock_lifecycle, record_event, state_of
from gateway.statedb.models import (
    AccountRow,
    UserRow,
    VehicleLifecycleEventRow,
    VehicleLifecycleRow,
    VehiclePairingAttemptRow,
    VehicleRow,
    VehicleTransferRow,
)

__all__ = [
    "Claimed",
    "LifecycleEventRecord",
    "LifecycleRepository",
    "LifecycleView",
    "PairingLocked",
    "TransferClosed",
    "TransferRecord",
    "WrongCode",
    "normalize_pairing_code",
    "pairing_code_hash",
]

#: the alphabet of pairing codes: Crockford's base 32 (no I, L, O, U: nothing to misread)
PAIRING_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def normalize_pairing_code(code: str) -> str:
    """The code as stored and compared: upper case, without spaces and dashes (the
    printed form groups it as ``XXXX-XXXX-XXXX``)."""
    return "".join(c for c in code.upper() if c not in " -")


def pairing_code_hash(vin: str, code: str) -> str:
    """SHA-256 of the VIN and the normalized code (a code has 60 random bits; the VIN
    makes one VIN's hash useless for another)."""
    return hashlib.sha256(f"{vin}:{normalize_pairing_code(code)}".encode()).hexdigest()


class TransferClosed(GatewayError):
    """The transfer is no longer pending (``why``: accepted, declined, cancelled,
    withdrawn, expired, or the vehicle changed hands since it was offered)."""

    def __init__(self, transfer_id: int, why: str) -> None:
        super().__init__(f"transfer {transfer_id} is {why}")
        self.transfer_id = transfer_id
        self.why = why


@dataclass(frozen=True, slots=True)
class LifecycleView:
    """A VIN's lifecycle: its state and what the registry knows besides the holder."""

    vin: str
    state: VehicleState
    account_id: int | None
    tenure: int | None
    registered_at: int | None
    pairing_code_open: bool
    pairing_locked_until: int | None
    service_account_id: int | None
    service_until: int | None
    decommissioned_at: int | None


@dataclass(frozen=True, slots=True)
class LifecycleEventRecord:
    id: int
    vin: str
    at: int
    event: str
    from_state: str
    to_state: str
    actor_user_id: int | None
    account_id: int | None
    tenure: int | None
    reason: str | None
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: VehicleLifecycleEventRow) -> LifecycleEventRecord:
        return cls(
            row.id,
            row.vin,
            row.at,
            row.event,
            row.from_state,
            row.to_state,
            row.actor_user_id,
            row.account_id,
            row.tenure,
            row.reason,
            row.detail,
        )


@dataclass(frozen=True, slots=True)
class TransferRecord:
    id: int
    vin: str
    tenure: int
    from_account_id: int
    to_email: str
    to_account_id: int | None
    note: str | None
    created_by: int | None
    created_at: int
    expires_at: int
    status: str
    decided_at: int | None
    decided_by: int | None
    #: the user who had ``to_email`` at the offer (only they may take it); None: nobody
    #: had it, and the receiver needs the claim token (``claim_token_hash``)
    to_user_id: int | None
    claim_token_hash: str | None

    @classmethod
    def from_row(cls, row: VehicleTransferRow) -> TransferRecord:
        return cls(
            row.id,
            row.vin,
            row.tenure,
            row.from_account_id,
            row.to_email,
            row.to_account_id,
            row.note,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.status,
            row.decided_at,
            row.decided_by,
            row.to_user_id,
            row.claim_token_hash,
        )


@dataclass(frozen=True, slots=True)
class Claimed:
    vehicle: VehicleRecord


@dataclass(frozen=True, slots=True)
class WrongCode:
    """The code was wrong (or the VIN cannot be claimed with a code: answered the same);
    ``failures``: the account's wrong codes for the VIN in a row; ``locked_until``: the
    account now waits until then (None: not yet)."""

    failures: int
    locked_until: int | None


@dataclass(frozen=True, slots=True)
class PairingLocked:
    """Too many wrong codes: no attempt (right or wrong) is looked at before ``until``."""

    until: int


ClaimOutcome = Claimed | WrongCode | PairingLocked


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _first_row_race(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``method`` again once when its transaction lost the race to create the VIN's
    lifecycle row or an account's pairing-attempts row (PostgreSQL: two transactions found
    no row to lock and both inserted; the primary key refused the second). The second run
    finds the row and locks it."""

    @functools.wraps(method)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except IntegrityError:
            return method(*args, **kwargs)

    return run


class LifecycleRepository:
    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    # --- reading ----------------------------------------------------------------------------

    def view(self, vin: str) -> LifecycleView:
        """The VIN's lifecycle (an unknown VIN is ``unregistered``)."""
        with self._db.read() as session:
            life = session.get(VehicleLifecycleRow, vin)
            vehicle = session.get(VehicleRow, vin)
            return _view(vin, life, vehicle)

    def history(self, vin: str) -> list[LifecycleEventRecord]:
        """Every recorded change of the VIN, oldest first."""
        with self._db.read() as session:
            rows = session.scalars(
                select(VehicleLifecycleEventRow)
                .where(VehicleLifecycleEventRow.vin == vin)
                .order_by(VehicleLifecycleEventRow.id)
            )
            return [LifecycleEventRecord.from_row(row) for row in rows]

    # --- the maker: registration and pairing codes -----------------------------------------

    @_first_row_race
    def register(self, vin: str, *, code_hash: str, by: int | None, now: int) -> LifecycleView:
        """The maker registers a built car with its pairing code (its hash)."""
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            transition = allowed(vin, decide(state_of(life, vehicle), LifecycleEvent.REGISTER))
            if life is None:
                life = VehicleLifecycleRow(vin=vin, pairing_failures=0)
                session.add(life)
            life.registered_at = now
            life.registered_by = by
            _new_code(session, life, code_hash, now)
            record_event(
                session, vin, transition, at=now, actor_user_id=by, account_id=None, tenure=None
            )
            session.flush()
            return _view(vin, life, vehicle)

    def issue_code(self, vin: str, *, code_hash: str, by: int | None, now: int) -> LifecycleView:
        """A new pairing code for a built car (the old one stops working, the wrong-code
        count starts again)."""
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            state = state_of(life, vehicle)
            transition = allowed(vin, decide(state, LifecycleEvent.ISSUE_CODE))
            assert life is not None  # built implies a lifecycle row
            _new_code(session, life, code_hash, now)
            record_event(
                session, vin, transition, at=now, actor_user_id=by, account_id=None, tenure=None
            )
            session.flush()
            return _view(vin, life, vehicle)

    # --- the buyer: a claim with the code ---------------------------------------------------

    @_first_row_race
    def claim(
        self,
        vin: str,
        *,
        code: str,
        account_id: int,
        label: str | None,
        mqtt_password_hash: str | None,
        by: int | None,
        now: int,
        uniform: bool = False,
    ) -> ClaimOutcome:
        """Claim a built car with its pairing code: a new holding period in ``account_id``.

        Wrong codes count per (VIN, ``account_id``) and per VIN (decision 0023): after
        :data:`PAIRING_LOCKOUT_AFTER` in a row the account waits 1 s, 2 s, 4 s ... up to
        :data:`PAIRING_MAX_LOCKOUT_S` (other accounts are not held up); after
        :data:`PAIRING_VIN_LOCKOUT_AFTER` for the VIN from all accounts together, every
        account that guessed wrong for it waits as well, while an account that never did
        (the buyer with the code) is still looked at. While an account waits nothing is
        compared. A right code is used up by the claim.

        ``uniform`` (everyone but administrators): a VIN that cannot be claimed with a code
        (never registered, held by another account, decommissioned) answers
        :class:`WrongCode` and counts like one, so a claim tells nothing about a car the
        caller does not hold; otherwise, and for a car ``account_id`` holds, such states
        raise :class:`LifecycleRefused` before any code is compared.
        """
        with self._db.write() as session:
            _require(session, AccountRow, account_id, "account")
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            attempt = session.get(VehiclePairingAttemptRow, (vin, account_id), with_for_update=True)
            waiting = _waits_until(attempt, life, now)
            if waiting is not None:
                return PairingLocked(waiting)
            decision = decide(state_of(life, vehicle), LifecycleEvent.CLAIM)
            if isinstance(decision, Refusal):
                held_here = (
                    vehicle is not None
                    and vehicle.revoked_at is None
                    and vehicle.account_id == account_id
                )
                if not uniform or held_here:
                    allowed(vin, decision)
                return _wrong_code(session, vin, account_id, attempt, None, now)
            transition = decision
            assert life is not None  # built implies a lifecycle row
            given = pairing_code_hash(vin, code)
            if life.pairing_code_hash is None or not hmac.compare_digest(
                given, life.pairing_code_hash
            ):
                return _wrong_code(session, vin, account_id, attempt, life, now)
            session.execute(
                delete(VehiclePairingAttemptRow).where(VehiclePairingAttemptRow.vin == vin)
            )
            life.pairing_code_hash = None
            life.pairing_failures = 0
            life.pairing_locked_until = None
            row = start_tenure(
                session,
                vehicle,
                vin=vin,
                account_id=account_id,
                label=label,
                mqtt_password_hash=mqtt_password_hash,
                by=by,
                now=now,
            )
            record_event(
                session,
                vin,
                transition,
                at=now,
                actor_user_id=by,
                account_id=account_id,
                tenure=row.tenure,
            )
            return Claimed(VehicleRecord.from_row(row))

    # --- service and decommissioning ---------------------------------------------------------

    @_first_row_race
    def start_service(
        self,
        vin: str,
        *,
        workshop_account_id: int,
        until: int,
        by: int | None,
        now: int,
        reason: str | None,
    ) -> LifecycleView:
        """The holder takes the car in for service at ``workshop_account_id`` until
        ``until``."""
        with self._db.write() as session:
            _require(session, AccountRow, workshop_account_id, "account")
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            transition = allowed(vin, decide(state_of(life, vehicle), LifecycleEvent.SERVICE_START))
            assert vehicle is not None  # active implies a vehicle row
            if life is None:
                life = VehicleLifecycleRow(vin=vin, pairing_failures=0)
                session.add(life)
            life.service_account_id = workshop_account_id
            life.service_until = until
            record_event(
                session,
                vin,
                transition,
                at=now,
                actor_user_id=by,
                account_id=vehicle.account_id,
                tenure=vehicle.tenure,
                reason=reason,
                detail={"workshop_account_id": workshop_account_id, "until": until},
            )
            session.flush()
            return _view(vin, life, vehicle)

    def end_service(self, vin: str, *, by: int | None, now: int) -> LifecycleView:
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            transition = allowed(vin, decide(state_of(life, vehicle), LifecycleEvent.SERVICE_END))
            assert life is not None  # in service implies both rows
            assert vehicle is not None
            workshop = life.service_account_id
            life.service_account_id = life.service_until = None
            record_event(
                session,
                vin,
                transition,
                at=now,
                actor_user_id=by,
                account_id=vehicle.account_id,
                tenure=vehicle.tenure,
                detail={"workshop_account_id": workshop},
            )
            session.flush()
            return _view(vin, life, vehicle)

    @_first_row_race
    def decommission(
        self, vin: str, *, by: int | None, now: int, reason: str | None
    ) -> LifecycleView:
        """Decommission the VIN for good: a running holding period ends (``decommissioned``:
        grants, invitations, open commands and transfers end with it), its broker password
        is erased, and no provisioning or claim is ever accepted again. Its data stays."""
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            transition = allowed(vin, decide(state_of(life, vehicle), LifecycleEvent.DECOMMISSION))
            if life is None:
                life = VehicleLifecycleRow(vin=vin, pairing_failures=0)
                session.add(life)
            if transition.ends_tenure:
                assert vehicle is not None
                assert transition.end_reason is not None
                end_tenure(session, vehicle, now=now, by=by, reason=transition.end_reason)
            if vehicle is not None:
                vehicle.mqtt_password_hash = None
            life.decommissioned_at = now
            life.pairing_code_hash = None
            life.service_account_id = life.service_until = None
            record_event(
                session,
                vin,
                transition,
                at=now,
                actor_user_id=by,
                account_id=None if vehicle is None else vehicle.account_id,
                tenure=None if vehicle is None else vehicle.tenure,
                reason=reason,
            )
            session.flush()
            return _view(vin, life, vehicle)

    # --- ownership transfer -----------------------------------------------------------------

    def offer_transfer(
        self,
        vin: str,
        *,
        to_email: str,
        note: str | None,
        by: int | None,
        now: int,
        expires_at: int,
        claim_token_hash: str | None = None,
    ) -> TransferRecord:
        """The holder offers the car to the user who has ``to_email`` now (bound to that
        user), or, when nobody has it, to whoever logs in with it and presents the claim
        token (``claim_token_hash``: its hash); an earlier pending offer of the VIN is
        withdrawn (one offer at a time)."""
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            email = normalize_email(to_email)
            found = session.execute(
                select(UserRow.id, UserRow.account_id).where(UserRow.email == email)
            ).first()
            receiver = None if found is None else found.id
            # an offer to a user of the holding account (the holder themselves) is refused
            # here, not only when it is accepted
            same = (
                found is not None and vehicle is not None and found.account_id == vehicle.account_id
            )
            allowed(vin, decide(state_of(life, vehicle), LifecycleEvent.TRANSFER, same_holder=same))
            assert vehicle is not None  # active implies a vehicle row
            session.execute(
                update(VehicleTransferRow)
                .where(VehicleTransferRow.vin == vin, VehicleTransferRow.status == "pending")
                .values(status="withdrawn", decided_at=now, decided_by=by)
                .execution_options(synchronize_session=False)
            )
            row = VehicleTransferRow(
                vin=vin,
                tenure=vehicle.tenure,
                from_account_id=vehicle.account_id,
                to_email=email,
                to_user_id=receiver,
                claim_token_hash=claim_token_hash,
                to_account_id=None,
                note=note,
                created_by=by,
                created_at=now,
                expires_at=expires_at,
                status="pending",
            )
            session.add(row)
            session.flush()
            return TransferRecord.from_row(row)

    def get_transfer(self, transfer_id: int) -> TransferRecord | None:
        with self._db.read() as session:
            row = session.get(VehicleTransferRow, transfer_id)
            return None if row is None else TransferRecord.from_row(row)

    def transfers_for(
        self,
        *,
        account_id: int | None,
        email: str | None,
        user_id: int | None = None,
        every: bool = False,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[TransferRecord]:
        """Transfers offered by or to ``account_id`` or to ``email``, newest first, those
        with an id below ``before_id`` (``every``: all of them, for administrators)."""
        query = select(VehicleTransferRow).order_by(VehicleTransferRow.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(VehicleTransferRow.id < before_id)
        if not every:
            sides = []
            if account_id is not None:
                sides.append(VehicleTransferRow.from_account_id == account_id)
                sides.append(VehicleTransferRow.to_account_id == account_id)
            if email is not None:
                sides.append(VehicleTransferRow.to_email == normalize_email(email))
            if user_id is not None:
                sides.append(VehicleTransferRow.to_user_id == user_id)
            if not sides:
                return []
            query = query.where(or_(*sides))
        with self._db.read() as session:
            return [TransferRecord.from_row(row) for row in session.scalars(query)]

    def close_transfer(
        self,
        transfer_id: int,
        *,
        status: Literal["declined", "cancelled"],
        by: int | None,
        now: int,
    ) -> TransferRecord:
        """Decline (the receiver) or cancel (the holder) a pending transfer."""
        with self._db.write() as session:
            row = _pending_transfer(session, transfer_id, now)
            row.status = status
            row.decided_at = now
            row.decided_by = by
            session.flush()
            return TransferRecord.from_row(row)

    def accept_transfer(
        self,
        transfer_id: int,
        *,
        account_id: int,
        label: str | None,
        mqtt_password_hash: str | None,
        by: int | None,
        now: int,
    ) -> tuple[TransferRecord, VehicleRecord]:
        """The receiver accepts into ``account_id``: the holder's period ends
        (``transferred``: its grants, invitations and open commands end), the receiver's
        starts with new broker credentials, in one transaction. Refused
        (:class:`TransferClosed`) when the transfer is not pending, has expired, or the car
        changed hands or period since it was offered."""
        with self._db.write() as session:
            _require(session, AccountRow, account_id, "account")
            # the VIN's rows first, the transfer last: the order of every other change
            # (offer, revocation) so two of them cannot deadlock (decision 0023)
            vin = session.scalar(
                select(VehicleTransferRow.vin).where(VehicleTransferRow.id == transfer_id)
            )
            if vin is None:
                raise NotFound("transfer", transfer_id)
            life = lock_lifecycle(session, vin)
            vehicle = _locked_vehicle(session, vin)
            row = _pending_transfer(session, transfer_id, now)
            if (
                vehicle is None
                or vehicle.revoked_at is not None
                or vehicle.tenure != row.tenure
                or vehicle.account_id != row.from_account_id
            ):
                # (revocation and decommissioning withdraw pending transfers: defence in depth)
                raise TransferClosed(transfer_id, "void: the vehicle changed hands")
            transition = allowed(
                row.vin,
                decide(
                    state_of(life, vehicle),
                    LifecycleEvent.TRANSFER,
                    same_holder=vehicle.account_id == account_id,
                ),
            )
            before = vehicle.account_id
            end_tenure(session, vehicle, now=now, by=by, reason="transferred")
            vehicle = start_tenure(
                session,
                vehicle,
                vin=row.vin,
                account_id=account_id,
                label=label,
                mqtt_password_hash=mqtt_password_hash,
                by=by,
                now=now,
            )
            row.status = "accepted"
            row.to_account_id = account_id
            row.decided_at = now
            row.decided_by = by
            record_event(
                session,
                row.vin,
                transition,
                at=now,
                actor_user_id=by,
                account_id=account_id,
                tenure=vehicle.tenure,
                detail={"transfer_id": row.id, "from_account_id": before},
            )
            session.flush()
            return TransferRecord.from_row(row), VehicleRecord.from_row(vehicle)


def _pending_transfer(session: Session, transfer_id: int, now: int) -> VehicleTransferRow:
    row = session.scalar(
        select(VehicleTransferRow).where(VehicleTransferRow.id == transfer_id).with_for_update()
    )
    if row is None:
        raise NotFound("transfer", transfer_id)
    if row.status != "pending":
        raise TransferClosed(transfer_id, row.status)
    if row.expires_at <= now:
        raise TransferClosed(transfer_id, "expired")
    return row


def _new_code(session: Session, life: VehicleLifecycleRow, code_hash: str, now: int) -> None:
    """A new code: every account's wrong guesses for the old one are forgotten."""
    life.pairing_code_hash = code_hash
    life.pairing_code_issued_at = now
    life.pairing_failures = 0
    life.pairing_locked_until = None
    session.execute(
        delete(VehiclePairingAttemptRow).where(VehiclePairingAttemptRow.vin == life.vin)
    )


def _waits_until(
    attempt: VehiclePairingAttemptRow | None, life: VehicleLifecycleRow | None, now: int
) -> int | None:
    """Until when the account of ``attempt`` waits before its next code is looked at: its
    own lock-out, or the VIN's when it guessed wrong for it before; None: not waiting."""
    own_until = None if attempt is None else attempt.locked_until
    if own_until is not None and own_until > now:
        return own_until
    vin_until = None if life is None else life.pairing_locked_until
    guessed = attempt is not None and attempt.failures > 0
    if guessed and vin_until is not None and vin_until > now:
        return vin_until
    return None


def _wrong_code(
    session: Session,
    vin: str,
    account_id: int,
    attempt: VehiclePairingAttemptRow | None,
    life: VehicleLifecycleRow | None,
    now: int,
) -> WrongCode:
    """Count a wrong code against (``vin``, ``account_id``) and, when the VIN has a code
    (``life``), against the VIN; committed with the transaction (the caller returns)."""
    if attempt is None:
        attempt = VehiclePairingAttemptRow(vin=vin, account_id=account_id, failures=0)
        session.add(attempt)
    attempt.failures += 1
    wait = lockout_ms(
        attempt.failures, lockout_after=PAIRING_LOCKOUT_AFTER, max_lockout_s=PAIRING_MAX_LOCKOUT_S
    )
    attempt.locked_until = None if wait is None else now + wait
    if life is not None:
        life.pairing_failures += 1
        vin_wait = lockout_ms(
            life.pairing_failures,
            lockout_after=PAIRING_VIN_LOCKOUT_AFTER,
            max_lockout_s=PAIRING_MAX_LOCKOUT_S,
        )
        life.pairing_locked_until = None if vin_wait is None else now + vin_wait
    session.flush()
    return WrongCode(attempt.failures, attempt.locked_until)


def _view(vin: str, life: VehicleLifecycleRow | None, vehicle: VehicleRow | None) -> LifecycleView:
    held = vehicle is not None and vehicle.revoked_at is None
    return LifecycleView(
        vin=vin,
        state=state_of(life, vehicle),
        account_id=vehicle.account_id if held and vehicle is not None else None,
        tenure=None if vehicle is None else vehicle.tenure,
        registered_at=None if life is None else life.registered_at,
        pairing_code_open=life is not None and life.pairing_code_hash is not None,
        pairing_locked_until=None if life is None else life.pairing_locked_until,
        service_account_id=None if life is None else life.service_account_id,
        service_until=None if life is None else life.service_until,
        decommissioned_at=None if life is None else life.decommissioned_at,
    )
