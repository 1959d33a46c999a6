"""The daily rollup of trips, for reports (issue 13, performance).

Revision ID: 0010_fleet_trip_days
Revises: 0008_vehicle_lifecycle
Create Date: 2026-12-06

Why: a 30-day report of 1,000 vehicles summed ~150,000 trips per request (0.6-1 s, most of
it the database scanning and grouping the trips). ``fleet_trip_days`` holds per vehicle's
holding period, UTC day of the trip's start and driver the count and sums; the rules worker
keeps it in the transaction that stores or replaces trips, and a report reads whole days
from it and only the partial days at the range's edges from the trips
(docs/decisions/0018-fleet-benchmarks.md). Existing trips are rolled up here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0010_fleet_trip_days"
down_revision: str | Sequence[str] | None = "0008_vehicle_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACCOUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fleet_trip_days",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("account_id", _ACCOUNT, nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("driver_id", sa.BigInteger(), nullable=True),
        sa.Column("trips", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("distance_m", sa.Float(), nullable=False),
        sa.Column("max_speed_kmh", sa.Float(), nullable=True),
        sa.Column("energy_used_pct", sa.Float(), nullable=True),
        sa.Column("fuel_used_pct", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleet_trip_days_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_trip_days")),
    )
    with op.batch_alter_table("fleet_trip_days", schema=None) as batch_op:
        # covering: a report of an account's days reads the index alone
        batch_op.create_index(
            "ix_fleet_trip_days_account_id_day",
            [
                *("account_id", "day", "vin", "tenure", "driver_id", "trips", "duration_ms"),
                *("distance_m", "max_speed_kmh", "energy_used_pct", "fuel_used_pct"),
            ],
        )
        batch_op.create_index("ix_fleet_trip_days_vin_tenure_day", ["vin", "tenure", "day"])
        batch_op.create_index("ix_fleet_trip_days_driver_id_day", ["driver_id", "day"])
    # integer division of epoch milliseconds: the UTC day on SQLite and PostgreSQL alike
    op.execute(
        "INSERT INTO fleet_trip_days (account_id, vin, tenure, day, driver_id, trips, "
        "duration_ms, distance_m, max_speed_kmh, energy_used_pct, fuel_used_pct) "
        "SELECT account_id, vin, tenure, start_at / 86400000, driver_id, count(*), "
        "sum(duration_ms), sum(distance_m), max(max_speed_kmh), sum(energy_used_pct), "
        "sum(fuel_used_pct) FROM fleet_trips "
        "GROUP BY account_id, vin, tenure, start_at / 86400000, driver_id"
    )


def downgrade() -> None:
    with op.batch_alter_table("fleet_trip_days", schema=None) as batch_op:
        batch_op.drop_index("ix_fleet_trip_days_driver_id_day")
        batch_op.drop_index("ix_fleet_trip_days_vin_tenure_day")
        batch_op.drop_index("ix_fleet_trip_days_account_id_day")
    op.drop_table("fleet_trip_days")
