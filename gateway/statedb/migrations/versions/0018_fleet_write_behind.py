"""The fleet worker writes its vehicles' states behind (issue 13, decision 0050): per
partition the log position its stored states are as of, and a note of every pass committed
since, from which a new holder replays the states exactly.

Revision ID: 0018_fleet_write_behind
Revises: 0016_fleet_workers
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0018_fleet_write_behind"
down_revision: str | Sequence[str] | None = "0016_fleet_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("fleet_partitions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("states_sample_cursor", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("states_event_cursor", sa.BigInteger(), nullable=False, server_default="0")
        )
    # until now every pass wrote its states: they are as of the cursor
    op.execute(
        "UPDATE fleet_partitions SET states_sample_cursor = sample_cursor, "
        "states_event_cursor = event_cursor"
    )
    op.create_table(
        "fleet_passes",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("sample_cursor", sa.BigInteger(), nullable=False),
        sa.Column("event_cursor", sa.BigInteger(), nullable=False),
        sa.Column("tick_at", sa.BigInteger(), nullable=True),
        sa.Column(
            "skipped",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_passes")),
    )
    with op.batch_alter_table("fleet_passes", schema=None) as batch_op:
        batch_op.create_index("ix_fleet_passes_partition_id", ["partition", "id"])


def downgrade() -> None:
    op.drop_table("fleet_passes")
    with op.batch_alter_table("fleet_partitions", schema=None) as batch_op:
        batch_op.drop_column("states_event_cursor")
        batch_op.drop_column("states_sample_cursor")
