"""Service partners, dealer consent, service plans and maintenance notices (issue 16, items
4 and 5: docs/decisions/0026-lifecycle-owner-services.md).

Revision ID: 0014_service_partners
Revises: 0013_web_sessions
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

# revision identifiers, used by Alembic
revision: str = "0014_service_partners"
down_revision: str | Sequence[str] | None = "0013_web_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _id() -> sa.Column[int]:
    return sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "service_partners",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("account_id", name="pk_service_partners"),
    )
    op.create_table(
        "dealer_consents",
        _id(),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("dealer_account_id", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_at", sa.BigInteger(), nullable=True),
        sa.Column("ended_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dealer_consents"),
    )
    op.create_index("ix_dealer_consents_vin_tenure", "dealer_consents", ["vin", "tenure"])
    op.create_index(
        "ix_dealer_consents_dealer_account_id", "dealer_consents", ["dealer_account_id"]
    )
    op.create_table(
        "service_plans",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("vin_prefix", sa.String(17), nullable=False),
        sa.Column("every_km", sa.Integer(), nullable=True),
        sa.Column("every_months", sa.Integer(), nullable=True),
        sa.Column("fault_codes", _JSON, nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_service_plans"),
        sa.UniqueConstraint("vin_prefix", name="uq_service_plans_vin_prefix"),
    )
    op.create_table(
        "maintenance_notices",
        _id(),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raised_at", sa.BigInteger(), nullable=False),
        sa.Column("done_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_maintenance_notices"),
        sa.UniqueConstraint("vin", "tenure", "key", name="uq_maintenance_notices_vin_tenure_key"),
    )


def downgrade() -> None:
    op.drop_table("maintenance_notices")
    op.drop_table("service_plans")
    op.drop_table("dealer_consents")
    op.drop_table("service_partners")
