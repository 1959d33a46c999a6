"""The daily rollup of alerts, for reports (issue 13, performance).

Revision ID: 0015_fleet_alert_days
Revises: 0014_service_partners
Create Date: 2026-12-07

Why: a 30-day report of 1,000 vehicles read every alert of the range, each through the
``(account_id, start_at)`` index and a lookup of its row (the alerts were a third of the
query's input). ``fleet_alert_days`` holds per vehicle's holding period, UTC day of the
alert's start and driver the alerts' count and idle time (the duration of the ended
``idling`` alerts), with a covering index; the rules worker keeps it in the transaction
that stores or changes alerts, and a report reads whole days from it and only the partial
days at the range's edges from the alerts (docs/decisions/0030-report-rollups.md).
Existing alerts are rolled up here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0015_fleet_alert_days"
down_revision: str | Sequence[str] | None = "0014_service_partners"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACCOUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fleet_alert_days",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("account_id", _ACCOUNT, nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("driver_id", sa.BigInteger(), nullable=True),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("idle_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleet_alert_days_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_alert_days")),
    )
    with op.batch_alter_table("fleet_alert_days", schema=None) as batch_op:
        # covering: a report of an account's days reads the index alone
        batch_op.create_index(
            "ix_fleet_alert_days_account_id_day",
            ["account_id", "day", "vin", "tenure", "driver_id", "alerts", "idle_ms"],
        )
        batch_op.create_index("ix_fleet_alert_days_vin_tenure_day", ["vin", "tenure", "day"])
        batch_op.create_index("ix_fleet_alert_days_driver_id_day", ["driver_id", "day"])
    # integer division of epoch milliseconds: the UTC day on SQLite and PostgreSQL alike
    op.execute(
        "INSERT INTO fleet_alert_days (account_id, vin, tenure, day, driver_id, alerts, "
        "idle_ms) "
        "SELECT account_id, vin, tenure, start_at / 86400000, driver_id, count(*), "
        "sum(CASE WHEN kind = 'idling' AND end_at IS NOT NULL THEN end_at - start_at "
        "ELSE 0 END) FROM fleet_alerts "
        "GROUP BY account_id, vin, tenure, start_at / 86400000, driver_id"
    )


def downgrade() -> None:
    with op.batch_alter_table("fleet_alert_days", schema=None) as batch_op:
        batch_op.drop_index("ix_fleet_alert_days_driver_id_day")
        batch_op.drop_index("ix_fleet_alert_days_vin_tenure_day")
        batch_op.drop_index("ix_fleet_alert_days_account_id_day")
    op.drop_table("fleet_alert_days")
