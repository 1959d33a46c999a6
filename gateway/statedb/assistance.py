"""Roadside-assistance shares (issue 16, item 3): an owner gives an assistance partner a
link with its own token to the vehicle's position and the state that matters for help,
until it expires or the owner ends it. Tokens arrive here only as hashes
(:func:`share_token_hash`); a share belongs to the holding period it was made in, so a
transfer or revocation ends it too (docs/decisions/0021-vehicle-lifecycle.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select

from gateway.statedb.database import StateDatabase
from gateway.statedb.models import AssistanceShareRow, VehicleRow

__all__ = ["AssistanceRepository", "AssistanceShare", "share_token_hash"]


def share_token_hash(token: str) -> str:
    """SHA-256 (hex) of a share token (192 random bits: no salt needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AssistanceShare:
    id: int
    vin: str
    tenure: int
    account_id: int
    partner: str
    created_by: int | None
    created_at: int
    expires_at: int
    ended_at: int | None
    ended_by: int | None

    def open_at(self, now: int) -> bool:
        return self.ended_at is None and now < self.expires_at

    @classmethod
    def from_row(cls, row: AssistanceShareRow) -> AssistanceShare:
        return cls(
            row.id,
            row.vin,
            row.tenure,
            row.account_id,
            row.partner,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.ended_at,
            row.ended_by,
        )


#: open shares one vehicle may have at a time (a breakdown needs one partner, maybe two)
MAX_OPEN_SHARES: Final = 5


class AssistanceRepository:
    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def create(
        self,
        *,
        vin: str,
        tenure: int,
        account_id: int,
        partner: str,
        token_hash: str,
        by: int | None,
        now: int,
        expires_at: int,
        limit: int = MAX_OPEN_SHARES,
    ) -> AssistanceShare | None:
        """A new share; None when the vehicle's period already has ``limit`` open ones."""
        with self._db.write() as session:
            open_now = session.scalars(
                select(AssistanceShareRow.id)
                .where(
                    AssistanceShareRow.vin == vin,
                    AssistanceShareRow.tenure == tenure,
                    AssistanceShareRow.ended_at.is_(None),
                    AssistanceShareRow.expires_at > now,
                )
                .with_for_update()
            ).all()
            if len(open_now) >= limit:
                return None
            row = AssistanceShareRow(
                vin=vin,
                tenure=tenure,
                account_id=account_id,
                token_hash=token_hash,
                partner=partner,
                created_by=by,
                created_at=now,
                expires_at=expires_at,
            )
            session.add(row)
            session.flush()
            return AssistanceShare.from_row(row)

    def list_for(
        self, vin: str, tenure: int, *, before_id: int | None, limit: int
    ) -> list[AssistanceShare]:
        """The shares of the vehicle's period ``tenure``, newest first."""
        query = (
            select(AssistanceShareRow)
            .where(AssistanceShareRow.vin == vin, AssistanceShareRow.tenure == tenure)
            .order_by(AssistanceShareRow.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(AssistanceShareRow.id < before_id)
        with self._db.read() as session:
            return [AssistanceShare.from_row(row) for row in session.scalars(query)]

    def end(
        self, share_id: int, *, vin: str, tenure: int, by: int | None, now: int
    ) -> AssistanceShare | None:
        """End the share (an ended one stays as it was); None unless it is one of the
        vehicle's period ``tenure``."""
        with self._db.write() as session:
            row = session.scalar(
                select(AssistanceShareRow)
                .where(AssistanceShareRow.id == share_id)
                .with_for_update()
            )
            if row is None or row.vin != vin or row.tenure != tenure:
                return None
            if row.ended_at is None:
                row.ended_at = now
                row.ended_by = by
            return AssistanceShare.from_row(row)

    def by_token(self, token_hash: str) -> tuple[AssistanceShare, bool] | None:
        """The share with this token and whether its period is still the vehicle's current
        one (held); None for an unknown token."""
        with self._db.read() as session:
            row = session.scalar(
                select(AssistanceShareRow).where(AssistanceShareRow.token_hash == token_hash)
            )
            if row is None:
                return None
            vehicle = session.get(VehicleRow, row.vin)
            current = (
                vehicle is not None and vehicle.revoked_at is None and vehicle.tenure == row.tenure
            )
            return AssistanceShare.from_row(row), current
