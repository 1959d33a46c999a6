"""Commands and their transitions (issue 3: remote commands).

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Why: remote commands need a lifecycle that survives restarts and is shared by every gateway
process: ``commands`` holds where each command stands, ``command_transitions`` the
append-only history of how it got there. Written by hand and checked against the models by
``tests/test_statedb.py`` (the autogenerate diff after upgrade must be empty).

Times are BIGINT epoch milliseconds. The UNIQUE (vin, idempotency_key) constraint is what
makes a retried request find the first command even when two retries race.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column(
            "params",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("result_timeout_ms", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=True),
        sa.Column("accepted_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("confirmation", sa.String(16), nullable=False),
        sa.Column("confirmed_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_commands"),
        sa.UniqueConstraint("vin", "idempotency_key", name="uq_commands_vin_idempotency_key"),
    )
    op.create_index("ix_commands_vin_created_at", "commands", ["vin", "created_at"])
    op.create_index("ix_commands_status_expires_at", "commands", ["status", "expires_at"])
    op.create_index("ix_commands_status_confirmation", "commands", ["status", "confirmation"])

    op.create_table(
        "command_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("command_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_command_transitions"),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["commands.id"],
            name="fk_command_transitions_command_id_commands",
        ),
        # also the index on command_id (its leading column)
        sa.UniqueConstraint("command_id", "seq", name="uq_command_transitions_command_id_seq"),
    )


def downgrade() -> None:
    op.drop_table("command_transitions")
    op.drop_index("ix_commands_status_confirmation", table_name="commands")
    op.drop_index("ix_commands_status_expires_at", table_name="commands")
    op.drop_index("ix_commands_vin_created_at", table_name="commands")
    op.drop_table("commands")
