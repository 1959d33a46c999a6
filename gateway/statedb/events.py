"""The event log: notifications written in the transaction of the change they report.

:func:`publish` (or :func:`publish_many`) is the one call a producer makes (command and
job updates; alerts and trips, decision 0017): inside its own write transaction, so an
event exists exactly when its change was committed. The same call queues a delivery for
each of the account's webhooks that wants the type (an outbox: a crash between the change
and the notification cannot lose it).

Ids are commit order: on PostgreSQL :func:`publish` first takes a transaction-scoped
advisory lock, so an event-writing transaction gets its id only after the previous one
committed; on SQLite the write lock does the same. A reader that has seen id N can
therefore never later find a committed event below N (with plain sequences it could: ids
are handed out at insert, commits land in any order).

:class:`EventLog` reads the log in id order and prunes it: it is a bounded replay buffer
(``Last-Event-ID``), not an archive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from sqlalchemy import bindparam, delete, event, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction

from gateway.core.notify import EventScope, type_matches
from gateway.statedb.database import EVENT_LOCK_HELD, StateDatabase, WriteScope
from gateway.statedb.models import EventRow, WebhookDeliveryRow, WebhookRow
from gateway.statedb.prepared import Prepared

__all__ = [
    "EventLog",
    "EventRecord",
    "NewEvent",
    "event_body",
    "insert_numbered",
    "publish",
    "publish_many",
]

#: key of the PostgreSQL advisory lock that orders event ids by commit
_EVENT_LOCK_KEY: Final = 0x7465_6C65_7674  # "televt"
#: ``Session.info`` key: this session's transaction holds the event lock
_EVENT_LOCK_HELD: Final = EVENT_LOCK_HELD
#: rows per INSERT ... RETURNING: SQLAlchemy splits a long one into batches (SQLite's bound
#: parameters) and splices their results together again and again, which grew with the
#: square of the rows (650,000 row fetches for 11,000 rows in the fleet worker's profile,
#: decision 0024); separate statements of this many rows each keep it linear
RETURNING_CHUNK: Final = 200
_EVENT_LOCK: Final = text("SELECT pg_advisory_xact_lock(:key)")
#: one command's event, on the DBAPI cursor (gateway.statedb.prepared, decision 0045)
_INSERT_EVENT: Final = Prepared(insert(EventRow).returning(EventRow.id))
_INSERT_EVENTS: Final = insert(EventRow).returning(EventRow.id, sort_by_parameter_order=True)
_ACCOUNT_HOOKS: Final = Prepared(
    select(WebhookRow.id, WebhookRow.event_types).where(
        WebhookRow.account_id == bindparam("account_id")
    )
)


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    at: int
    type: str
    account_id: int | None
    actor_user_id: int | None
    data: dict[str, Any]

    @property
    def scope(self) -> EventScope:
        return EventScope(self.account_id, self.actor_user_id)

    @classmethod
    def from_row(cls, row: EventRow) -> EventRecord:
        return cls(row.id, row.at, row.type, row.account_id, row.actor_user_id, dict(row.data))


def event_body(event_id: int | None, event_type: str, at: int, data: dict[str, Any]) -> str:
    """The JSON every consumer gets (the SSE ``data`` and the webhook body)."""
    return orjson.dumps({"id": event_id, "type": event_type, "at": at, "data": data}).decode()


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to publish (see :func:`publish_many`)."""

    type: str
    at: int
    data: dict[str, Any]
    account_id: int | None
    actor_user_id: int | None = None


def publish(
    session: WriteScope,
    *,
    type: str,
    at: int,
    data: dict[str, Any],
    account_id: int | None,
    actor_user_id: int | None = None,
) -> int:
    """Append an event in the caller's write transaction (see the module docstring) and
    queue its webhook deliveries; its id."""
    return publish_many(session, [NewEvent(type, at, data, account_id, actor_user_id)])[0]


def publish_many(session: WriteScope, events: Sequence[NewEvent]) -> list[int]:
    """:func:`publish` for several events at once, in their order: one INSERT for the
    events and one for their deliveries, whatever their number. Core statements, not ORM
    objects: the rules worker publishes thousands of events in one transaction, where one
    flush per event walked every object the session held and a round trip per event added
    up on PostgreSQL (decision 0017 has the figures)."""
    if not events:
        return []
    # on the session's connection: the ORM's execution of an INSERT (a "bulk insert" of
    # rows it then maps) cost more than the statement (decision 0036); what the caller
    # changed through the ORM is written first, as the ORM's own autoflush did
    session.flush()
    connection = session.connection()
    if connection.dialect.name == "postgresql" and _EVENT_LOCK_HELD not in session.info:
        # held until the transaction ends (once per transaction is enough), or until a
        # savepoint taken before it is rolled back to: see _forget_event_lock
        connection.execute(_EVENT_LOCK, {"key": _EVENT_LOCK_KEY})
        session.info[_EVENT_LOCK_HELD] = True
    rows = [{"at": e.at, "type": e.type, "account_id": e.account_id,
             "actor_user_id": e.actor_user_id, "data": e.data} for e in events]  # fmt: skip
    if len(rows) == 1:  # one command's event: no executemany and its splicing of results
        ids = [int(_INSERT_EVENT.scalar(connection, rows[0]))]
    elif connection.dialect.name == "sqlite":
        ids = insert_numbered(connection, EventRow, rows)
    else:
        ids = [
            int(i)
            for start in range(0, len(rows), RETURNING_CHUNK)
            for i in connection.execute(_INSERT_EVENTS, rows[start : start + RETURNING_CHUNK])
            .scalars()
        ]  # fmt: skip
    deliveries: list[dict[str, Any]] = []
    for event_id, e in zip(ids, events, strict=True):
        if e.account_id is None:
            continue
        hooks = [h for h, patterns in _account_hooks(session, e.account_id)
                 if type_matches(patterns, e.type)]  # fmt: skip
        if hooks:
            body = event_body(event_id, e.type, e.at, e.data)
            deliveries.extend(
                {"webhook_id": h, "event_id": event_id, "event_type": e.type, "body": body,
                 "status": "pending", "attempts": 0, "created_at": e.at, "next_attempt_at": e.at}
                for h in hooks
            )  # fmt: skip
    if deliveries:
        connection.execute(insert(WebhookDeliveryRow), deliveries)
    return ids


def insert_numbered(connection: Connection, table: Any, rows: list[dict[str, Any]]) -> list[int]:
    """SQLite: insert ``rows`` (dicts of column values, given their ``id`` here) into
    ``table`` (a mapped class whose ``id`` is the rowid, without AUTOINCREMENT) with one
    executemany, no RETURNING; their ids, in order. They are the ids SQLite would give:
    "one larger than the largest rowid in the table prior to the insert", and a write
    transaction (``BEGIN IMMEDIATE``) holds the database's write lock, so no other writer
    inserts in between. Why: SQLAlchemy executes an ``INSERT ... RETURNING`` whose ids must
    come back in the parameters' order one row at a time on SQLite (its RETURNING order is
    not defined), and the rules worker inserts a thousand events and alerts per pass that
    way: a quarter of its commit (decision 0040)."""
    if not rows:
        return []
    first = int(connection.execute(select(func.max(table.id))).scalar() or 0) + 1
    ids = list(range(first, first + len(rows)))
    for row_id, row in zip(ids, rows, strict=True):
        row["id"] = row_id
    connection.execute(insert(table), rows)
    return ids


@event.listens_for(Session, "after_soft_rollback")
def _forget_event_lock(session: Session, previous_transaction: SessionTransaction) -> None:
    """A rollback, of a savepoint too, may have released the event lock: PostgreSQL
    releases a lock taken inside a savepoint when the savepoint is rolled back to. The
    command writer commits several writes in one transaction, each in a savepoint
    (``StateDatabase.grouped``); after one that published and then failed, the next ones'
    events got their ids without the lock, and a fleet worker's events committed meanwhile
    were read past them: lost to every stream (issue 13). The next :func:`publish_many`
    takes it again (it stacks: taking it twice costs one statement, nothing else)."""
    session.info.pop(_EVENT_LOCK_HELD, None)


def _account_hooks(session: WriteScope, account_id: int) -> list[tuple[int, list[str]]]:
    """The account's webhooks (id, event patterns), read once per transaction (a
    producer's many events in one transaction need one look-up per account)."""
    cache: dict[int, list[tuple[int, list[str]]]] = session.info.setdefault("webhooks", {})
    if account_id not in cache:
        rows = _ACCOUNT_HOOKS.all(session.connection(), {"account_id": account_id})
        cache[account_id] = [(hook_id, list(patterns)) for hook_id, patterns in rows]
    return cache[account_id]


class EventLog:
    """Reads and prunes the event log of a :class:`StateDatabase` (thread-safe)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def last_id(self) -> int:
        """The newest event's id (0: none)."""
        with self._db.read() as session:
            return int(session.scalar(select(func.max(EventRow.id))) or 0)

    def first_id(self) -> int | None:
        """The oldest id still kept (None: the log is empty)."""
        with self._db.read() as session:
            value = session.scalar(select(func.min(EventRow.id)))
            return None if value is None else int(value)

    def after(self, last_id: int, *, limit: int = 1000) -> list[EventRecord]:
        """Events after ``last_id``, oldest first, at most ``limit``."""
        # columns, not mapped rows: every API process reads every event (its bus polls each
        # 100 ms), and building ORM instances was most of that read's cost (decision 0035)
        query = (
            select(
                EventRow.id,
                EventRow.at,
                EventRow.type,
                EventRow.account_id,
                EventRow.actor_user_id,
                EventRow.data,
            )
            .where(EventRow.id > last_id)
            .order_by(EventRow.id)
            .limit(limit)
        )
        with self._db.read() as session:
            return [
                EventRecord(event_id, at, type_, account_id, actor, dict(data))
                for event_id, at, type_, account_id, actor, data in session.execute(query)
            ]

    def prune(self, *, before_at: int, chunk: int = 2000) -> int:
        """Delete events older than ``before_at`` (one chunk, oldest first); how many.
        Webhook deliveries keep their own copy of the body, so pruning never breaks a
        retry. The newest event always stays: on SQLite (no AUTOINCREMENT on this table)
        an emptied table would give id 1 again, and every reader that keeps its place by
        id (the MQTT fan-out's cursor, live streams) would skip the new events up to the
        old highest id (decision 0039)."""
        with self._db.write() as session:
            newest = select(func.max(EventRow.id)).scalar_subquery()
            ids = (
                select(EventRow.id)
                .where(EventRow.at < before_at, EventRow.id < newest)
                .order_by(EventRow.id)
            )
            doomed = list(session.scalars(ids.limit(chunk)))
            if not doomed:
                return 0
            session.execute(delete(EventRow).where(EventRow.id.in_(doomed)))
            return len(doomed)
