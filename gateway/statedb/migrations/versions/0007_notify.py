"""Idempotency keys of bulk commands (issue 13, section 7; decision 0017).

Revision ID: 0007_command_job_keys
Revises: 0006_command_jobs
Create Date: 2026-12-06

Why: a client that retries ``POST /v1/command-jobs`` after a lost answer must not send a
second command to a whole fleet. ``command_job_keys`` remembers, per scope (the caller's
account) and key, the request's hash and the job it made, for 24 hours; the row is written
in the job's transaction, so a key never names a job that does not exist.
``integration_credentials`` are the MQTT log-ins of an organization's integrations
(home-automation tools), which may only read the organization's alert topic.
``notify_cursors`` holds the MQTT fan-out's lease and its place in the event log, so one
API process publishes each alert and a restart resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# revision identifiers, used by Alembic
revision: str = "0007_notify"
down_revision: str | Sequence[str] | None = "0006_command_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "command_job_keys",
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name="pk_command_job_keys"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["command_jobs.id"], name="fk_command_job_keys_job_id_command_jobs"
        ),
    )
    op.create_index("ix_command_job_keys_created_at", "command_job_keys", ["created_at"])
    op.create_table(
        "integration_credentials",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_integration_credentials"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_integration_credentials_account_id_accounts"
        ),
        # ids name broker identities: never reused after a delete (see the model)
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_integration_credentials_account_id", "integration_credentials", ["account_id"]
    )
    op.create_table(
        "notify_cursors",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_notify_cursors"),
    )


def downgrade() -> None:
    op.drop_table("notify_cursors")
    op.drop_table("integration_credentials")
    op.drop_table("command_job_keys")
