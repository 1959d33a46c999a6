"""The lifecycle registry's rows inside someone else's transaction: lock a VIN's lifecycle
row, derive its state, record a change in its history, refuse what the core refuses.

Used by :mod:`gateway.statedb.accounts` (provisioning and revocation are lifecycle changes
too) and :mod:`gateway.statedb.lifecycle` (the registry's own operations); neither imports
the other's internals through here. Lock order, everywhere: the lifecycle row, then the
``vehicles`` row (PostgreSQL; SQLite's write transactions are exclusive anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.core.vehicle_lifecycle import (
    Refusal,
    Transition,
    VehicleState,
    current_state,
)
from gateway.errors import GatewayError
from gateway.statedb.models import VehicleLifecycleEventRow, VehicleLifecycleRow, VehicleRow

__all__ = [
    "LifecycleRefused",
    "allowed",
    "event_values",
    "lock_lifecycle",
    "record_event",
    "state_of",
]


class LifecycleRefused(GatewayError):
    """The vehicle's lifecycle does not allow the change (the core's :class:`Refusal`);
    ``reason`` is its stable code."""

    def __init__(self, vin: str, refusal: Refusal) -> None:
        super().__init__(
            f"{vin}: {refusal.event} refused in state {refusal.state}: {refusal.message}"
        )
        self.vin = vin
        self.refusal = refusal
        self.reason = refusal.reason


def lock_lifecycle(session: Session, vin: str) -> VehicleLifecycleRow | None:
    """The VIN's lifecycle row, locked for the transaction (None: it has none)."""
    return session.scalar(
        select(VehicleLifecycleRow).where(VehicleLifecycleRow.vin == vin).with_for_update()
    )


def state_of(life: VehicleLifecycleRow | None, vehicle: VehicleRow | None) -> VehicleState:
    """The VIN's state from its two rows."""
    held = vehicle is not None and vehicle.revoked_at is None
    return current_state(
        registered=life is not None and life.registered_at is not None,
        held=held,
        in_service=held and life is not None and life.service_account_id is not None,
        decommissioned=life is not None and life.decommissioned_at is not None,
    )


def record_event(
    session: Session,
    vin: str,
    transition: Transition,
    *,
    at: int,
    actor_user_id: int | None,
    account_id: int | None,
    tenure: int | None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> VehicleLifecycleEventRow:
    """Append one change to the VIN's history, in the caller's transaction."""
    row = VehicleLifecycleEventRow(
        **event_values(
            vin,
            transition,
            at=at,
            actor_user_id=actor_user_id,
            account_id=account_id,
            tenure=tenure,
            reason=reason,
            detail=detail,
        )
    )
    session.add(row)
    return row


def event_values(
    vin: str,
    transition: Transition,
    *,
    at: int,
    actor_user_id: int | None,
    account_id: int | None,
    tenure: int | None,
    reason: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The columns of one history row (:func:`record_event`; a bulk provisioning inserts
    many of them with one statement)."""
    return {
        "vin": vin,
        "at": at,
        "event": str(transition.event),
        "from_state": str(transition.before),
        "to_state": str(transition.after),
        "actor_user_id": actor_user_id,
        "account_id": account_id,
        "tenure": tenure,
        "reason": reason,
        "detail": None if detail is None else dict(detail),
    }


def allowed(vin: str, decision: Transition | Refusal) -> Transition:
    """The transition, or :class:`LifecycleRefused`."""
    if isinstance(decision, Refusal):
        raise LifecycleRefused(vin, decision)
    return decision
