"""Declarative models of the state database.

The models describe the schema the migrations (``migrations/versions``) build; the migrations
are the authority at runtime, the models are what the code reads and writes through. A test
compares the two after ``upgrade()`` (Alembic's autogenerate diff must be empty), so they
cannot drift apart unnoticed.

Conventions, and why:

* Times are ``BIGINT`` epoch milliseconds (UTC), as in the telemetry store and the device
  contract: no time-zone or driver conversion can shift them, and SQLite and PostgreSQL
  compare them identically.
* Command ids are UUIDs stored as their 36-character text: the same value is the MQTT
  correlation data and the id in URLs, and SQLite has no UUID type.
* Status, event and confirmation are plain strings, not database enums or CHECK constraints:
  ``gateway.commands.lifecycle`` is the single authority on which values exist and what may
  follow what, and a new status then needs no table rebuild on SQLite.
* Constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can refer to
  them by name on both backends (SQLite's batch mode needs names to rebuild tables).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "NAMING_CONVENTION",
    "Base",
    "CommandRow",
    "CommandTransitionRow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: longest accepted ``Idempotency-Key`` (the column is ``VARCHAR(255)``; the repository checks
#: the length itself because SQLite would store a longer one and PostgreSQL would refuse it)
MAX_IDEMPOTENCY_KEY_LENGTH = 255

# JSONB on PostgreSQL (compact, comparable, indexable later); JSON text elsewhere
_JSON = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an ``INTEGER PRIMARY KEY`` (the rowid), not a BIGINT one
_BIGINT_PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every state-database table (one :class:`MetaData`)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CommandRow(Base):
    """One remote command and where it stands (one row per command, updated in place).

    The history of how it got there is in :class:`CommandTransitionRow`.
    """

    __tablename__ = "commands"
    __table_args__ = (
        # One command per (vehicle, Idempotency-Key): a retried request finds the first one.
        # NULL keys are distinct on both backends, so requests without a key never collide.
        UniqueConstraint("vin", "idempotency_key"),
        # a vehicle's commands, newest first (and its queue, oldest first); also "vin indexed"
        Index("ix_commands_vin_created_at", "vin", "created_at"),
        # the expiry sweep: status IN (queued, sent) AND expires_at <= now
        Index("ix_commands_status_expires_at", "status", "expires_at"),
        # the confirmation watcher: status = succeeded AND confirmation = pending; the
        # result-timeout sweep (status = accepted) uses its leading column
        Index("ix_commands_status_confirmation", "status", "confirmation"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17))
    type: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(_JSON)
    status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_IDEMPOTENCY_KEY_LENGTH))
    #: SHA-256 (hex) of the request's canonical form, to tell a retry from a reused key
    request_hash: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    result_timeout_ms: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int | None] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    #: pending | confirmed | unconfirmed | not_applicable (``ConfirmationState``)
    confirmation: Mapped[str] = mapped_column(String(16))
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger)


class CommandTransitionRow(Base):
    """One status change of one command; append-only (never updated or deleted).

    ``seq`` counts 1, 2, 3, ... per command (1 is the initial ``queued`` row, whose ``event``
    is NULL), so clients can poll for what is new with ``after_seq``. The UNIQUE
    ``(command_id, seq)`` constraint is also the index on ``command_id``: a second index on
    that column alone would only cost writes.
    """

    __tablename__ = "command_transitions"
    __table_args__ = (UniqueConstraint("command_id", "seq"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(String(36), ForeignKey("commands.id"))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    event: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
