"""Ownership periods of vehicles, invitations, per-address login throttling (issue 10).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Why: a VIN revoked by one account and provisioned by another handed its history, commands
and idempotency keys to the new holder. Ownership becomes a period (a *tenure*): every
vehicle row says which period is current (``vehicles.tenure``), ``vehicle_tenures`` records
each period (account, start, end), and commands, grants and invitations carry the number of
the period they belong to (docs/decisions/0009-vehicle-ownership-periods.md). Also: sharing
with someone outside the account becomes an invitation the recipient accepts
(``vehicle_invitations``); a password change or a disable ends access tokens
(``users.token_version``); wrong passwords are counted per (user, client address)
(``login_throttles``) instead of per user (``users.failed_logins`` and ``locked_until`` go).

Existing data:

* every vehicle is in its first period (``tenure`` 1), which started at its
  ``provisioned_at`` (and ended at ``revoked_at`` for a revoked one);
* a command or grant created before its vehicle's ``provisioned_at`` was made for an earlier
  holder (the VIN was revoked and provisioned again before this migration): it gets period
  0, which no holder reads; everything else gets period 1;
* every grant gains the service ``read``: reading state and history is now a service of its
  own, and until now every grant gave it (an empty list meant "read only").

SQLite: the UNIQUE (vin, idempotency_key) constraint of ``commands`` is part of its CREATE
TABLE, so changing it means rebuilding the table (batch mode: copy and move). Other tables
refer to ``commands`` and foreign keys are on, so the checks are deferred to the commit
(``PRAGMA defer_foreign_keys``): when the copy takes the old table's name, every reference
is whole again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _bigint_pk() -> sa.types.TypeEngine[int]:
    """BIGINT, but INTEGER on SQLite (as in migration 0002)."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    if _sqlite():
        op.execute("PRAGMA defer_foreign_keys = ON")
    _tenures()
    _commands()
    _grants()
    _invitations()
    _users()


def _tenures() -> None:
    op.add_column("vehicles", sa.Column("tenure", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "vehicle_tenures",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("account_id", _bigint_pk(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("started_by", _bigint_pk(), nullable=True),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_by", _bigint_pk(), nullable=True),
        sa.Column("end_reason", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vehicle_tenures"),
        sa.ForeignKeyConstraint(["vin"], ["vehicles.vin"], name="fk_vehicle_tenures_vin_vehicles"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_vehicle_tenures_account_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["started_by"], ["users.id"], name="fk_vehicle_tenures_started_by_users"
        ),
        sa.ForeignKeyConstraint(
            ["ended_by"], ["users.id"], name="fk_vehicle_tenures_ended_by_users"
        ),
        sa.UniqueConstraint("vin", "number", name="uq_vehicle_tenures_vin_number"),
    )
    op.create_index("ix_vehicle_tenures_account_id", "vehicle_tenures", ["account_id"])
    op.execute(
        "INSERT INTO vehicle_tenures "
        "(vin, number, account_id, started_at, started_by, ended_at, ended_by, end_reason) "
        "SELECT vin, 1, account_id, provisioned_at, provisioned_by, revoked_at, NULL, "
        "CASE WHEN revoked_at IS NULL THEN NULL ELSE 'revoked' END FROM vehicles"
    )


def _period_of(table: str) -> str:
    """UPDATE giving each row of ``table`` period 0 if it was created before its vehicle's
    current provisioning (an earlier holder's), else leaving it at 1."""
    return (
        f"UPDATE {table} SET tenure = 0 WHERE EXISTS (SELECT 1 FROM vehicles "
        f"WHERE vehicles.vin = {table}.vin AND {table}.created_at < vehicles.provisioned_at)"
    )


def _commands() -> None:
    with op.batch_alter_table("commands", recreate="auto") as batch:
        batch.add_column(sa.Column("tenure", sa.Integer(), server_default="1", nullable=False))
        batch.drop_constraint("uq_commands_vin_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_commands_vin_tenure_idempotency_key", ["vin", "tenure", "idempotency_key"]
        )
    op.execute(_period_of("commands"))


def _grants() -> None:
    op.add_column(
        "vehicle_grants", sa.Column("tenure", sa.Integer(), server_default="1", nullable=False)
    )
    op.execute(_period_of("vehicle_grants"))
    grants = sa.table(
        "vehicle_grants", sa.column("id", sa.Integer()), sa.column("services", _json())
    )
    bind = op.get_bind()
    for grant_id, services in bind.execute(sa.select(grants.c.id, grants.c.services)).all():
        if "read" not in services:
            bind.execute(
                grants.update().where(grants.c.id == grant_id).values(services=["read", *services])
            )


def _invitations() -> None:
    op.create_table(
        "vehicle_invitations",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("services", _json(), nullable=False),
        sa.Column("invited_by", _bigint_pk(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=True),
        sa.Column("grant_id", _bigint_pk(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vehicle_invitations"),
        sa.ForeignKeyConstraint(
            ["vin"], ["vehicles.vin"], name="fk_vehicle_invitations_vin_vehicles"
        ),
        sa.ForeignKeyConstraint(
            ["invited_by"], ["users.id"], name="fk_vehicle_invitations_invited_by_users"
        ),
        sa.ForeignKeyConstraint(
            ["grant_id"],
            ["vehicle_grants.id"],
            name="fk_vehicle_invitations_grant_id_vehicle_grants",
        ),
    )
    op.create_index("ix_vehicle_invitations_email", "vehicle_invitations", ["email"])
    op.create_index("ix_vehicle_invitations_vin", "vehicle_invitations", ["vin"])


def _users() -> None:
    op.add_column(
        "users", sa.Column("token_version", sa.Integer(), server_default="0", nullable=False)
    )
    # plain ALTER TABLE ... DROP COLUMN on both backends (SQLite has it since 3.35)
    op.drop_column("users", "failed_logins")
    op.drop_column("users", "locked_until")
    op.create_table(
        "login_throttles",
        sa.Column("user_id", _bigint_pk(), nullable=False),
        sa.Column("remote_addr", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "remote_addr", name="pk_login_throttles"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_login_throttles_user_id_users"),
    )


def downgrade() -> None:
    """Back to 0002. Loses what 0002 cannot hold: holding periods (every vehicle's history
    is one again), invitations, the ``read`` service (removed from grants), token versions
    and login throttles. Refused while two commands of one VIN share an idempotency key in
    different periods (the old constraint could not hold them)."""
    if _sqlite():
        op.execute("PRAGMA defer_foreign_keys = ON")
    op.drop_table("login_throttles")
    op.add_column(
        "users", sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("users", sa.Column("locked_until", sa.BigInteger(), nullable=True))
    op.drop_column("users", "token_version")
    op.drop_index("ix_vehicle_invitations_vin", table_name="vehicle_invitations")
    op.drop_index("ix_vehicle_invitations_email", table_name="vehicle_invitations")
    op.drop_table("vehicle_invitations")
    grants = sa.table(
        "vehicle_grants", sa.column("id", sa.Integer()), sa.column("services", _json())
    )
    bind = op.get_bind()
    for grant_id, services in bind.execute(sa.select(grants.c.id, grants.c.services)).all():
        if "read" in services:
            bind.execute(
                grants.update()
                .where(grants.c.id == grant_id)
                .values(services=[s for s in services if s != "read"])
            )
    op.drop_column("vehicle_grants", "tenure")
    with op.batch_alter_table("commands", recreate="auto") as batch:
        batch.drop_constraint("uq_commands_vin_tenure_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_commands_vin_idempotency_key", ["vin", "idempotency_key"]
        )
        batch.drop_column("tenure")
    op.drop_index("ix_vehicle_tenures_account_id", table_name="vehicle_tenures")
    op.drop_table("vehicle_tenures")
    op.drop_column("vehicles", "tenure")
