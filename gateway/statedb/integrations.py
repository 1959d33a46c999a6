"""Integration credentials and the MQTT fan-out's cursor (decision 0017).

An integration credential is an MQTT log-in of an organization's integration (a
home-automation tool, a dispatcher's dashboard): user name ``integration-<id>``, allowed
by the broker to read the organization's alert topic ``integrations/<account id>/alerts``
and nothing else (``gateway.broker.auth.integration_acls``). Creating or deleting one
bumps the broker identities' version in the same transaction, so the broker sync applies
it within a poll, exactly as for a vehicle.

The fan-out (``gateway.notify.mqtt``) keeps its place in the event log in
``notify_cursors`` under a lease: one API process at a time publishes, and a restart (or a
takeover by another process) resumes after the last event it acknowledged, so an alert is
published at least once while the event log still keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway.statedb.database import StateDatabase
from gateway.statedb.models import (
    BrokerAuthStateRow,
    EventRow,
    IntegrationCredentialRow,
    NotifyCursorRow,
)

__all__ = ["IntegrationRecord", "IntegrationRepository", "integration_username"]

#: the one row of ``broker_auth_state`` (as in gateway.statedb.accounts)
_BROKER_STATE_ID: Final = 1


def integration_username(credential_id: int) -> str:
    return f"integration-{credential_id}"


@dataclass(frozen=True, slots=True)
class IntegrationRecord:
    id: int
    account_id: int
    description: str | None
    created_by: int
    created_at: int

    @property
    def username(self) -> str:
        return integration_username(self.id)

    @classmethod
    def from_row(cls, row: IntegrationCredentialRow) -> IntegrationRecord:
        return cls(row.id, row.account_id, row.description, row.created_by, row.created_at)


def _bump_broker_version(session: Session) -> None:
    """The broker sync's signal that identities changed (see gateway.statedb.accounts)."""
    session.execute(
        update(BrokerAuthStateRow)
        .where(BrokerAuthStateRow.id == _BROKER_STATE_ID)
        .values(version=BrokerAuthStateRow.version + 1)
        .execution_options(synchronize_session=False)
    )


class IntegrationRepository:
    """Integration credentials and notification cursors of a :class:`StateDatabase`."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def create(
        self, *, account_id: int, password_hash: str, description: str | None, created_by: int,
        now: int, limit: int,
    ) -> IntegrationRecord | None:  # fmt: skip
        """A new credential; None when the account already has ``limit`` of them."""
        with self._db.write() as session:
            have = session.scalars(
                select(IntegrationCredentialRow.id)
                .where(IntegrationCredentialRow.account_id == account_id)
                .with_for_update()
            ).all()
            if len(have) >= limit:
                return None
            row = IntegrationCredentialRow(
                account_id=account_id,
                password_hash=password_hash,
                description=description,
                created_by=created_by,
                created_at=now,
            )
            session.add(row)
            session.flush()
            _bump_broker_version(session)
            return IntegrationRecord.from_row(row)

    def get(self, credential_id: int) -> IntegrationRecord | None:
        with self._db.read() as session:
            row = session.get(IntegrationCredentialRow, credential_id)
            return None if row is None else IntegrationRecord.from_row(row)

    def page(
        self, *, account_id: int | None, after_id: int | None, limit: int
    ) -> list[IntegrationRecord]:
        c = IntegrationCredentialRow
        query = select(c).order_by(c.id).limit(limit)
        if account_id is not None:
            query = query.where(c.account_id == account_id)
        if after_id is not None:
            query = query.where(c.id > after_id)
        with self._db.read() as session:
            return [IntegrationRecord.from_row(r) for r in session.scalars(query)]

    def delete(self, credential_id: int) -> None:
        """The credential is gone from the broker at the next sync (it is disconnected)."""
        with self._db.write() as session:
            session.execute(
                delete(IntegrationCredentialRow).where(IntegrationCredentialRow.id == credential_id)
            )
            _bump_broker_version(session)

    def broker_identities(self) -> list[tuple[str, int, str]]:
        """(user name, account id, password hash) of every credential: what the broker's
        password file and Dynamic Security roles are rendered from."""
        c = IntegrationCredentialRow
        with self._db.read() as session:
            rows = session.execute(select(c.id, c.account_id, c.password_hash).order_by(c.id))
            return [(integration_username(i), a, h) for i, a, h in rows]

    # --- the fan-out's cursor ------------------------------------------------------------

    def take_cursor(self, name: str, owner: str, *, now: int, ttl_ms: int) -> int | None:
        """Take or renew the lease on ``name``; the event id it stands at (None: another
        owner holds it). A new cursor starts at the newest event now, so the first start of
        an installation does not publish the whole log."""
        with self._db.write() as session:
            row = session.get(NotifyCursorRow, name, with_for_update=True)
            if row is None:
                newest = session.scalar(select(EventRow.id).order_by(EventRow.id.desc()).limit(1))
                row = NotifyCursorRow(name=name, owner=None, lease_until=0, event_id=newest or 0)
                session.add(row)
            if row.owner not in (None, owner) and row.lease_until >= now:
                return None
            row.owner, row.lease_until = owner, now + ttl_ms
            return row.event_id

    def advance_cursor(self, name: str, owner: str, event_id: int, *, now: int) -> bool:
        """Move the cursor to ``event_id`` if ``owner`` still holds the lease; whether it
        did (False: taken over, the new owner publishes from the old place again)."""
        with self._db.write() as session:
            result = session.execute(
                update(NotifyCursorRow)
                .where(
                    NotifyCursorRow.name == name,
                    NotifyCursorRow.owner == owner,
                    NotifyCursorRow.lease_until >= now,
                )
                .values(event_id=event_id)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def release_cursor(self, name: str, owner: str) -> None:
        with self._db.write() as session:
            session.execute(
                update(NotifyCursorRow)
                .where(NotifyCursorRow.name == name, NotifyCursorRow.owner == owner)
                .values(owner=None, lease_until=0)
                .execution_options(synchronize_session=False)
            )
