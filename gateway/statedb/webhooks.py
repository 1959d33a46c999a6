"""The webhook repository: organizations' webhooks and the queue and log of deliveries.

Deliveries are queued by :func:`gateway.statedb.events.publish` in the transaction of the
event (the outbox). The worker (``gateway.notify.webhooks``) :meth:`claims
<WebhookRepository.claim_due>` due ones by pushing their next attempt a lease ahead, so
several API processes never send the same attempt twice (PostgreSQL: ``FOR UPDATE SKIP
LOCKED``; SQLite: the write lock), and :meth:`records <WebhookRepository.record_attempt>`
each attempt's outcome. A delivery whose process died mid-attempt is tried again when its
lease runs out.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gateway.statedb.database import StateDatabase
from gateway.statedb.events import event_body
from gateway.statedb.models import AccountRow, WebhookDeliveryRow, WebhookRow

__all__ = ["DeliveryRecord", "WebhookLimitReached", "WebhookRecord", "WebhookRepository"]

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class WebhookLimitReached(Exception):
    """The account already has as many webhooks as it may (``args[0]``)."""


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    id: int
    account_id: int
    url: str
    event_types: list[str]
    secret: str
    description: str | None
    created_by: int
    created_at: int

    @classmethod
    def from_row(cls, row: WebhookRow) -> WebhookRecord:
        return cls(
            row.id,
            row.account_id,
            row.url,
            list(row.event_types),
            row.secret,
            row.description,
            row.created_by,
            row.created_at,
        )


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    webhook_id: int
    event_id: int | None
    event_type: str
    body: str
    status: str
    attempts: int
    created_at: int
    next_attempt_at: int | None
    last_attempt_at: int | None
    response_status: int | None
    error: str | None

    @classmethod
    def from_row(cls, row: WebhookDeliveryRow) -> DeliveryRecord:
        return cls(
            row.id,
            row.webhook_id,
            row.event_id,
            row.event_type,
            row.body,
            row.status,
            row.attempts,
            row.created_at,
            row.next_attempt_at,
            row.last_attempt_at,
            row.response_status,
            row.error,
        )


class WebhookRepository:
    """Webhooks and deliveries of a :class:`StateDatabase` (thread-safe)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    def create(
        self,
        *,
        limit: int | None = None,
        account_id: int,
        url: str,
        event_types: list[str],
        secret: str,
        description: str | None,
        created_by: int,
        now: int,
    ) -> WebhookRecord:
        with self._db.write() as session:
            if limit is not None:
                # the account's row locked first (PostgreSQL; SQLite: the write lock), so
                # two creations at once cannot both see room for one more
                session.execute(
                    select(AccountRow.id).where(AccountRow.id == account_id).with_for_update()
                )
                have = session.scalar(
                    select(func.count())
                    .select_from(WebhookRow)
                    .where(WebhookRow.account_id == account_id)
                )
                if (have or 0) >= limit:
                    raise WebhookLimitReached(limit)
            row = WebhookRow(
                account_id=account_id,
                url=url,
                event_types=event_types,
                secret=secret,
                description=description,
                created_by=created_by,
                created_at=now,
            )
            session.add(row)
            session.flush()
            return WebhookRecord.from_row(row)

    def get(self, webhook_id: int) -> WebhookRecord | None:
        with self._db.read() as session:
            row = session.get(WebhookRow, webhook_id)
            return None if row is None else WebhookRecord.from_row(row)

    def page(
        self, *, account_id: int | None, after_id: int | None, limit: int
    ) -> list[WebhookRecord]:
        """Oldest first; those of ``account_id`` (None: every one)."""
        query = select(WebhookRow).order_by(WebhookRow.id).limit(limit)
        if account_id is not None:
            query = query.where(WebhookRow.account_id == account_id)
        if after_id is not None:
            query = query.where(WebhookRow.id > after_id)
        with self._db.read() as session:
            return [WebhookRecord.from_row(row) for row in session.scalars(query)]

    def delete(self, webhook_id: int) -> None:
        """The webhook and its delivery log."""
        with self._db.write() as session:
            session.execute(
                delete(WebhookDeliveryRow).where(WebhookDeliveryRow.webhook_id == webhook_id)
            )
            session.execute(delete(WebhookRow).where(WebhookRow.id == webhook_id))

    def enqueue_test(self, webhook_id: int, *, now: int) -> DeliveryRecord:
        """A ``webhook.test`` delivery, due at once (no event behind it)."""
        with self._db.write() as session:
            return self._add_test(session, webhook_id, now)

    def enqueue_test_once(self, webhook_id: int, *, now: int) -> DeliveryRecord | None:
        """:meth:`enqueue_test`, or None while an earlier test delivery of the webhook is
        still pending (being tried or retried): the API's test button, which must not turn
        the gateway into a flood of requests at someone's URL."""
        with self._db.write() as session:
            pending = session.scalar(
                select(WebhookDeliveryRow.id)
                .where(
                    WebhookDeliveryRow.webhook_id == webhook_id,
                    WebhookDeliveryRow.event_type == "webhook.test",
                    WebhookDeliveryRow.status == PENDING,
                )
                .limit(1)
            )
            if pending is not None:
                return None
            return self._add_test(session, webhook_id, now)

    @staticmethod
    def _add_test(session: Session, webhook_id: int, now: int) -> DeliveryRecord:
        body = event_body(None, "webhook.test", now, {"webhook_id": webhook_id})
        row = WebhookDeliveryRow(
            webhook_id=webhook_id,
            event_id=None,
            event_type="webhook.test",
            body=body,
            status=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
        session.add(row)
        session.flush()
        return DeliveryRecord.from_row(row)

    def deliveries(
        self, webhook_id: int, *, before_id: int | None, limit: int
    ) -> list[DeliveryRecord]:
        """The webhook's delivery log, newest first."""
        query = (
            select(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.webhook_id == webhook_id)
            .order_by(WebhookDeliveryRow.id.desc())
            .limit(limit)
        )
        if before_id is not None:
            query = query.where(WebhookDeliveryRow.id < before_id)
        with self._db.read() as session:
            return [DeliveryRecord.from_row(row) for row in session.scalars(query)]

    def claim_due(
        self, *, now: int, lease_ms: int, limit: int
    ) -> list[tuple[DeliveryRecord, WebhookRecord]]:
        """Pending deliveries due at ``now``, each with its webhook, leased for
        ``lease_ms`` (their next attempt moved that far ahead) so no other worker takes
        them meanwhile. Looks first in a read transaction: the worker polls twice a second
        and must not take SQLite's write lock when nothing is due."""
        due = (
            WebhookDeliveryRow.status == PENDING,
            WebhookDeliveryRow.next_attempt_at <= now,
        )
        with self._db.read() as session:
            if session.scalar(select(WebhookDeliveryRow.id).where(*due).limit(1)) is None:
                return []
        with self._db.write() as session:
            rows = session.scalars(
                select(WebhookDeliveryRow)
                .where(
                    WebhookDeliveryRow.status == PENDING,
                    WebhookDeliveryRow.next_attempt_at <= now,
                )
                .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            claimed = []
            for row in rows:
                hook = session.get(WebhookRow, row.webhook_id)
                if hook is None:
                    continue
                row.next_attempt_at = now + lease_ms
                claimed.append((DeliveryRecord.from_row(row), WebhookRecord.from_row(hook)))
            return claimed

    def record_attempt(
        self,
        delivery_id: int,
        *,
        at: int,
        delivered: bool,
        response_status: int | None,
        error: str | None,
        next_attempt_at: int | None,
    ) -> DeliveryRecord | None:
        """One attempt's outcome: delivered, or failed with a next attempt (None: given
        up, ``failed``)."""
        with self._db.write() as session:
            row = session.get(WebhookDeliveryRow, delivery_id, with_for_update=True)
            if row is None:
                return None  # the webhook was deleted meanwhile
            row.attempts += 1
            row.last_attempt_at = at
            row.response_status = response_status
            row.error = None if error is None else error[:500]
            if delivered:
                row.status, row.next_attempt_at = DELIVERED, None
            elif next_attempt_at is None:
                row.status, row.next_attempt_at = FAILED, None
            else:
                row.next_attempt_at = next_attempt_at
            session.flush()
            return DeliveryRecord.from_row(row)

    def prune_deliveries(self, *, keep: int) -> int:
        """Cap each webhook's delivery log: delete its finished deliveries older than its
        ``keep`` newest (pending ones stay, whatever their age); how many were deleted."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        d = WebhookDeliveryRow
        deleted = 0
        with self._db.read() as session:
            crowded = list(
                session.scalars(
                    select(d.webhook_id).group_by(d.webhook_id).having(func.count() > keep)
                )
            )
        for webhook_id in crowded:
            with self._db.write() as session:
                cutoff = session.scalar(
                    select(d.id)
                    .where(d.webhook_id == webhook_id)
                    .order_by(d.id.desc())
                    .offset(keep - 1)
                    .limit(1)
                )
                if cutoff is None:
                    continue
                result = session.execute(
                    delete(d).where(d.webhook_id == webhook_id, d.id < cutoff, d.status != PENDING)
                )
                deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
        return deleted
