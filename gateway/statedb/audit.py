"""The audit log: who did what to which account's objects, from where, and how it ended.

Append-only twice over: this module has no method that changes or deletes an entry, and the
database refuses UPDATE and DELETE on ``audit_log`` with triggers (migration 0002), so
neither a bug elsewhere nor a hand-typed statement rewrites history.

Entries are written by the API after (or instead of) the operation they describe, each in a
transaction of its own: an entry for a refused request must be kept although the request
changed nothing, which is why it is not part of the operation's transaction.

``detail`` is free-form JSON for what the columns do not hold, and exactly the place where a
password or token would slip in one day ("let's log the request body"). :meth:`AuditLog.append`
therefore refuses keys that look secret, at any depth, before anything is written; see
:data:`SECRET_KEY_PARTS`. A refusal is a ``ValueError`` (a programming error to fix, not a
condition to handle).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import insert, select

from gateway.statedb.database import StateDatabase, WriteScope
from gateway.statedb.models import AuditRow
from gateway.statedb.prepared import Prepared

__all__ = [
    "AUDIT_OUTCOMES",
    "SECRET_KEY_PARTS",
    "AuditLog",
    "AuditRecord",
]

#: what ``outcome`` may be: done, refused by policy, or attempted and failed
AUDIT_OUTCOMES: Final = frozenset({"ok", "denied", "failed"})

#: a ``detail`` key containing one of these (in any case) is refused. Deliberately broad:
#: ``api_key_id`` or ``token_family`` are refused too; name such values differently (``prefix``,
#: ``family``) or put them in ``target``. A false alarm costs a rename, a miss costs a leak.
SECRET_KEY_PARTS: Final = ("password", "token", "secret", "key")

#: longest ``action`` (the column is VARCHAR(64); PostgreSQL would refuse a longer one and
#: SQLite would store it, so the limit is checked here for both)
_MAX_ACTION_LENGTH: Final = 64
#: longest ``remote_addr`` kept (VARCHAR(64)); longer ones are cut, not refused: an address
#: comes from the network, and an unusual one must not cost the entry
_MAX_REMOTE_ADDR_LENGTH: Final = 64
#: one entry, its columns the parameters' keys (a detail of None is left out: SQL NULL)
#: run on the DBAPI cursor: one per command (gateway.statedb.prepared, decision 0045)
_INSERT_ENTRY: Final = Prepared(insert(AuditRow).returning(AuditRow.id))


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit entry as stored (``at`` in epoch milliseconds)."""

    id: int
    at: int
    actor_user_id: int | None
    actor: str
    account_id: int | None
    action: str
    target: str | None
    outcome: str
    remote_addr: str | None
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: AuditRow) -> AuditRecord:
        return cls(
            id=row.id,
            at=row.at,
            actor_user_id=row.actor_user_id,
            actor=row.actor,
            account_id=row.account_id,
            action=row.action,
            target=row.target,
            outcome=row.outcome,
            remote_addr=row.remote_addr,
            detail=None if row.detail is None else dict(row.detail),
        )


class AuditLog:
    """Append to and query the audit log of a :class:`StateDatabase` (thread-safe)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def append(
        self,
        *,
        at: int,
        actor: str,
        action: str,
        outcome: str = "ok",
        actor_user_id: int | None = None,
        account_id: int | None = None,
        target: str | None = None,
        remote_addr: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Write one entry in a transaction of its own and return it as stored.

        Raises ``ValueError`` (nothing written) for an unknown ``outcome``, an empty or
        over-long ``action``, and a ``detail`` that is not JSON (NaN included) or has a key
        that looks secret (:data:`SECRET_KEY_PARTS`). ``detail`` is stored as the JSON it
        serialises to, and the returned record holds that form (tuples become lists), so it
        equals what :meth:`query` reads back later.
        """
        with self._db.write() as session:
            return self.append_in(
                session,
                at=at,
                actor=actor,
                action=action,
                outcome=outcome,
                actor_user_id=actor_user_id,
                account_id=account_id,
                target=target,
                remote_addr=remote_addr,
                detail=detail,
            )

    @staticmethod
    def append_in(
        session: WriteScope,
        *,
        at: int,
        actor: str,
        action: str,
        outcome: str = "ok",
        actor_user_id: int | None = None,
        account_id: int | None = None,
        target: str | None = None,
        remote_addr: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """:meth:`append` inside the caller's write transaction: the entry commits (or rolls
        back) with the change it records, and costs no commit of its own. Used for commands,
        the most frequent audited action."""
        if outcome not in AUDIT_OUTCOMES:
            raise ValueError(
                f"outcome must be one of {', '.join(sorted(AUDIT_OUTCOMES))}, got {outcome!r}"
            )
        if not 0 < len(action) <= _MAX_ACTION_LENGTH:
            raise ValueError(f"action must have 1 to {_MAX_ACTION_LENGTH} characters: {action!r}")
        stored_detail = None if detail is None else _checked_detail(detail)
        if remote_addr is not None:
            remote_addr = remote_addr[:_MAX_REMOTE_ADDR_LENGTH]
        values: dict[str, Any] = {
            "at": at,
            "actor_user_id": actor_user_id,
            "actor": actor,
            "account_id": account_id,
            "action": action,
            "target": target,
            "outcome": str(outcome),
            "remote_addr": remote_addr,
        }
        # Core insert, not the ORM, on the session's connection, built once: a None detail
        # must be SQL NULL (left out of the INSERT), which the ORM would store as the JSON
        # text 'null'; and this runs for every command (decision 0036)
        row = values if stored_detail is None else {**values, "detail": stored_detail}
        entry_id = _INSERT_ENTRY.scalar(session.connection(), row)
        return AuditRecord(id=entry_id, detail=stored_detail, **values)

    def query(
        self,
        *,
        account_id: int | None = None,
        actor_user_id: int | None = None,
        action: str | None = None,
        target: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Entries matching every filter given, newest first (by id: the order they were
        written in); page on with ``before_id`` = the last entry's id.

        ``limit`` must be positive (``ValueError``); bounding it is the API's job, which also
        asks for one more than a page to know whether another page follows.
        """
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if account_id is not None:
            query = query.where(AuditRow.account_id == account_id)
        if actor_user_id is not None:
            query = query.where(AuditRow.actor_user_id == actor_user_id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        if target is not None:
            query = query.where(AuditRow.target == target)
        if before_id is not None:
            query = query.where(AuditRow.id < before_id)
        with self._db.read() as session:
            return [AuditRecord.from_row(row) for row in session.scalars(query)]


def _checked_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """``detail`` as the JSON object it will be stored as, after the secret-key check."""
    _refuse_secret_keys(detail, path="detail")
    try:
        stored = json.loads(json.dumps(dict(detail), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit detail must be JSON-serialisable: {exc}") from exc
    assert isinstance(stored, dict)
    return stored


def _refuse_secret_keys(value: object, *, path: str) -> None:
    """Raise ``ValueError`` naming the first key (at any depth) that looks secret."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            lowered = str(key).lower()
            if any(part in lowered for part in SECRET_KEY_PARTS):
                raise ValueError(
                    f"audit {path} key {key!r} looks like a secret (contains one of "
                    f"{', '.join(SECRET_KEY_PARTS)}); secrets never go into the audit log, "
                    "rename the key if the value is not one"
                )
            _refuse_secret_keys(item, path=f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _refuse_secret_keys(item, path=f"{path}[{index}]")
