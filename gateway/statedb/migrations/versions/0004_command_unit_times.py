"""The unit's own clock for when it accepted a command (issue 11, device contract v1).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

Why: confirmation by telemetry compares a sample's ``ts`` (the unit's clock) with the moment
the unit accepted the command. The gateway's receive time of ``accepted`` is another clock:
a sample taken 45 ms after the unit acted was older than that receive time and never
confirmed the command. ``unit_accepted_at`` is the ``ts`` of the unit's ``accepted`` (or of
its final answer when it sent none), so both sides of the comparison are the unit's clock.
Nullable: commands from before this revision fall back to the gateway's ``accepted_at``.

(Numbered 0004 so that it never collides with the 0003 of a parallel branch, ownership
periods, which came before it in the chain.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("commands", sa.Column("unit_accepted_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("unit_accepted_at")
