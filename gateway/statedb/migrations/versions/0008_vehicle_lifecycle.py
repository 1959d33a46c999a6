"""The vehicle lifecycle registry, its history, ownership transfers and roadside-assistance
shares (issue 16).

Revision ID: 0008_vehicle_lifecycle
Revises: 0007_notify
Create Date: 2026-12-06

Why: a VIN's life (registered by the maker, claimed with a pairing code, transferred,
in service, decommissioned) is more than who holds it now (``vehicles``) and the holding
periods (``vehicle_tenures``): ``vehicle_lifecycle`` keeps the rest per VIN, a VIN the
maker registered has a row before anyone holds it (so no foreign key to ``vehicles``);
``vehicle_lifecycle_events`` is every change with who and why; ``vehicle_transfers`` the
transfers offered and how they ended; ``assistance_shares`` the time-bounded links an
owner gives an assistance partner (docs/decisions/0021-vehicle-lifecycle.md). Existing
vehicles get no row: their state is derived from ``vehicles`` (held or not, unregistered).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0008_vehicle_lifecycle"
down_revision: str | Sequence[str] | None = "0007_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column[int]:
    return sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "vehicle_lifecycle",
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("registered_at", sa.BigInteger(), nullable=True),
        sa.Column("registered_by", sa.BigInteger(), nullable=True),
        sa.Column("pairing_code_hash", sa.String(64), nullable=True),
        sa.Column("pairing_code_issued_at", sa.BigInteger(), nullable=True),
        sa.Column("pairing_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("pairing_locked_until", sa.BigInteger(), nullable=True),
        sa.Column("service_account_id", sa.BigInteger(), nullable=True),
        sa.Column("service_until", sa.BigInteger(), nullable=True),
        sa.Column("decommissioned_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("vin", name="pk_vehicle_lifecycle"),
    )
    op.create_table(
        "vehicle_lifecycle_events",
        _id(),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=False),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("tenure", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vehicle_lifecycle_events"),
    )
    op.create_index("ix_vehicle_lifecycle_events_vin_id", "vehicle_lifecycle_events", ["vin", "id"])
    op.create_table(
        "vehicle_transfers",
        _id(),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("from_account_id", sa.BigInteger(), nullable=False),
        sa.Column("to_email", sa.String(320), nullable=False),
        sa.Column("to_account_id", sa.BigInteger(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.BigInteger(), nullable=True),
        sa.Column("decided_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vehicle_transfers"),
    )
    op.create_index("ix_vehicle_transfers_vin", "vehicle_transfers", ["vin"])
    op.create_index("ix_vehicle_transfers_to_email", "vehicle_transfers", ["to_email"])
    op.create_index(
        "ix_vehicle_transfers_from_account_id", "vehicle_transfers", ["from_account_id"]
    )

    op.create_table(
        "assistance_shares",
        _id(),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("partner", sa.Text(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_assistance_shares"),
        sa.UniqueConstraint("token_hash", name="uq_assistance_shares_token_hash"),
    )
    op.create_index("ix_assistance_shares_vin_id", "assistance_shares", ["vin", "id"])


def downgrade() -> None:
    op.drop_table("assistance_shares")
    op.drop_table("vehicle_transfers")
    op.drop_table("vehicle_lifecycle_events")
    op.drop_table("vehicle_lifecycle")
