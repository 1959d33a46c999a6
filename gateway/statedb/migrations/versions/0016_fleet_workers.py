"""Fleet rules workers announce themselves, so several processes share the partitions
evenly (issue 13: docs/decisions/0029-fleet-worker-process.md).

Revision ID: 0016_fleet_workers
Revises: 0015_fleet_alert_days
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0016_fleet_workers"
down_revision: str | Sequence[str] | None = "0015_fleet_alert_days"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_workers",
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("alive_until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("owner", name="pk_fleet_workers"),
    )


def downgrade() -> None:
    op.drop_table("fleet_workers")
