"""Bulk commands (command jobs), the event log and webhooks (issue 13, sections 7 and 8).

Revision ID: 0006_command_jobs
Revises: 0005_fleets
Create Date: 2026-12-06

Why: a command to many vehicles is a job whose per-vehicle commands are ordinary commands
(``commands.job_id``) plus the vehicles that got none (``command_job_refusals``); counts are
counted, not stored. ``events`` is the bounded replay buffer of the live stream and the
outbox of webhook deliveries, written in the transaction of the change it reports;
``webhooks`` and ``webhook_deliveries`` are the organizations' receivers and every attempt
to reach them (docs/decisions/0016-command-jobs-and-notifications.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0006_command_jobs"
down_revision: str | Sequence[str] | None = "0005_fleets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column[int]:
    return sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("job_id", sa.BigInteger(), nullable=True))
        batch.create_index("ix_commands_job_id_status", ["job_id", "status"])
    op.create_table(
        "command_jobs",
        _id(),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("params", _JSON, nullable=False),
        sa.Column("target", _JSON, nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("cancelled_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_command_jobs"),
    )
    op.create_index("ix_command_jobs_account_id_id", "command_jobs", ["account_id", "id"])
    op.create_index("ix_command_jobs_finished_at", "command_jobs", ["finished_at"])
    op.create_table(
        "command_job_refusals",
        _id(),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_command_job_refusals"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["command_jobs.id"], name="fk_command_job_refusals_job_id_command_jobs"
        ),
        sa.UniqueConstraint("job_id", "vin", name="uq_command_job_refusals_job_id_vin"),
    )
    op.create_table(
        "events",
        _id(),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("data", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    _webhooks()


def _webhooks() -> None:
    op.create_table(
        "webhooks",
        _id(),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", _JSON, nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_webhooks"),
    )
    op.create_index("ix_webhooks_account_id", "webhooks", ["account_id"])
    op.create_table(
        "webhook_deliveries",
        _id(),
        sa.Column("webhook_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("last_attempt_at", sa.BigInteger(), nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(
            ["webhook_id"], ["webhooks.id"], name="fk_webhook_deliveries_webhook_id_webhooks"
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )
    op.create_index(
        "ix_webhook_deliveries_webhook_id_id", "webhook_deliveries", ["webhook_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("events")
    op.drop_table("command_job_refusals")
    op.drop_table("command_jobs")
    with op.batch_alter_table("commands") as batch:
        batch.drop_index("ix_commands_job_id_status")
        batch.drop_column("job_id")
