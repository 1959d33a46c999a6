"""Fleet management (issue 13): fleets and groups, drivers and their assignments,
geofences, per-organization rule settings, alerts, trips, and the rules worker's per-VIN
state and partition leases.

Revision ID: 0005_fleets
Revises: 0004
Create Date: 2026-12-06

Why: the pure fleet core (``gateway.core.fleet``, decision 0014) decides alerts and trips;
this is where they, their inputs (fences, settings, who drives) and the worker's progress
(state per vehicle, cursor per partition, stored with the effects in one transaction) live.
New tables only: nothing existing is rewritten, so it is instant on any installation.

(Named ``0005_fleets``; the bulk-commands revision of the same issue follows it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0005_fleets"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # referenced tables first
    _fleet_partitions()
    _fleet_vin_state()
    _fleet_alerts()
    _fleet_rule_settings()
    _fleet_trips()
    _fleets()
    _geofences()
    _drivers()
    _driver_assignments()
    _fleet_vehicles()


def _fleet_partitions() -> None:
    op.create_table(
        "fleet_partitions",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.BigInteger(), nullable=False),
        sa.Column("sample_cursor", sa.BigInteger(), nullable=False),
        sa.Column("event_cursor", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_fleet_partitions")),
    )


def _fleet_vin_state() -> None:
    op.create_table(
        "fleet_vin_state",
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column(
            "rule_state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "trip_state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("vin", "tenure", name=op.f("pk_fleet_vin_state")),
    )


def _fleet_alerts() -> None:
    op.create_table(
        "fleet_alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=48), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("start_at", sa.BigInteger(), nullable=False),
        sa.Column("end_at", sa.BigInteger(), nullable=True),
        sa.Column(
            "detail",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("driver_id", sa.BigInteger(), nullable=True),
        sa.Column("acknowledged_by", sa.BigInteger(), nullable=True),
        sa.Column("acknowledged_at", sa.BigInteger(), nullable=True),
        sa.Column("cleared_by", sa.BigInteger(), nullable=True),
        sa.Column("cleared_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleet_alerts_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_alerts")),
    )
    with op.batch_alter_table("fleet_alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fleet_alerts_account_id_start_at", ["account_id", "start_at"], unique=False
        )
        batch_op.create_index(
            "ix_fleet_alerts_vin_tenure_key", ["vin", "tenure", "key"], unique=False
        )


def _fleet_rule_settings() -> None:
    op.create_table(
        "fleet_rule_settings",
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleet_rule_settings_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_fleet_rule_settings")),
    )


def _fleet_trips() -> None:
    op.create_table(
        "fleet_trips",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("tenure", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.BigInteger(), nullable=False),
        sa.Column("end_at", sa.BigInteger(), nullable=False),
        sa.Column("start_lon", sa.Float(), nullable=True),
        sa.Column("start_lat", sa.Float(), nullable=True),
        sa.Column("end_lon", sa.Float(), nullable=True),
        sa.Column("end_lat", sa.Float(), nullable=True),
        sa.Column("distance_m", sa.Float(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("max_speed_kmh", sa.Float(), nullable=True),
        sa.Column("avg_speed_kmh", sa.Float(), nullable=False),
        sa.Column("energy_used_pct", sa.Float(), nullable=True),
        sa.Column("fuel_used_pct", sa.Float(), nullable=True),
        sa.Column("ended_by", sa.String(length=16), nullable=False),
        sa.Column("driver_id", sa.BigInteger(), nullable=True),
        sa.Column("prior_ignition", sa.Boolean(), nullable=True),
        sa.Column("prior_moving", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleet_trips_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_trips")),
    )
    with op.batch_alter_table("fleet_trips", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fleet_trips_account_id_start_at", ["account_id", "start_at"], unique=False
        )
        batch_op.create_index(
            "ix_fleet_trips_driver_id_start_at", ["driver_id", "start_at"], unique=False
        )
        batch_op.create_index(
            "ix_fleet_trips_vin_tenure_start_at", ["vin", "tenure", "start_at"], unique=False
        )


def _fleets() -> None:
    op.create_table(
        "fleets",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("speed_limit_kmh", sa.Float(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_fleets_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleets")),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_fleets_account_id_name")),
    )


def _geofences() -> None:
    op.create_table(
        "geofences",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "geometry",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("speed_limit_kmh", sa.Float(), nullable=True),
        sa.Column(
            "active_window",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("alert_enter", sa.Boolean(), nullable=False),
        sa.Column("alert_exit", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_geofences_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_geofences")),
    )
    with op.batch_alter_table("geofences", schema=None) as batch_op:
        batch_op.create_index("ix_geofences_account_id", ["account_id"], unique=False)


def _drivers() -> None:
    op.create_table(
        "drivers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_drivers_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_drivers_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drivers")),
    )
    with op.batch_alter_table("drivers", schema=None) as batch_op:
        batch_op.create_index("ix_drivers_account_id", ["account_id"], unique=False)


def _driver_assignments() -> None:
    op.create_table(
        "driver_assignments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column(
            "driver_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("start_at", sa.BigInteger(), nullable=False),
        sa.Column("end_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["driver_id"], ["drivers.id"], name=op.f("fk_driver_assignments_driver_id_drivers")
        ),
        sa.ForeignKeyConstraint(
            ["vin"], ["vehicles.vin"], name=op.f("fk_driver_assignments_vin_vehicles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_driver_assignments")),
    )
    with op.batch_alter_table("driver_assignments", schema=None) as batch_op:
        batch_op.create_index("ix_driver_assignments_driver_id", ["driver_id"], unique=False)
        batch_op.create_index(
            "ix_driver_assignments_vin_start_at", ["vin", "start_at"], unique=False
        )


def _fleet_vehicles() -> None:
    op.create_table(
        "fleet_vehicles",
        sa.Column("fleet_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("added_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["fleet_id"], ["fleets.id"], name=op.f("fk_fleet_vehicles_fleet_id_fleets")
        ),
        sa.ForeignKeyConstraint(
            ["vin"], ["vehicles.vin"], name=op.f("fk_fleet_vehicles_vin_vehicles")
        ),
        sa.PrimaryKeyConstraint("fleet_id", "vin", name=op.f("pk_fleet_vehicles")),
    )
    with op.batch_alter_table("fleet_vehicles", schema=None) as batch_op:
        batch_op.create_index("ix_fleet_vehicles_vin", ["vin"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fleet_vehicles", schema=None) as batch_op:
        batch_op.drop_index("ix_fleet_vehicles_vin")

    op.drop_table("fleet_vehicles")
    with op.batch_alter_table("driver_assignments", schema=None) as batch_op:
        batch_op.drop_index("ix_driver_assignments_vin_start_at")
        batch_op.drop_index("ix_driver_assignments_driver_id")

    op.drop_table("driver_assignments")
    with op.batch_alter_table("drivers", schema=None) as batch_op:
        batch_op.drop_index("ix_drivers_account_id")

    op.drop_table("drivers")
    with op.batch_alter_table("geofences", schema=None) as batch_op:
        batch_op.drop_index("ix_geofences_account_id")

    op.drop_table("geofences")
    op.drop_table("fleets")
    with op.batch_alter_table("fleet_trips", schema=None) as batch_op:
        batch_op.drop_index("ix_fleet_trips_vin_tenure_start_at")
        batch_op.drop_index("ix_fleet_trips_driver_id_start_at")
        batch_op.drop_index("ix_fleet_trips_account_id_start_at")

    op.drop_table("fleet_trips")
    op.drop_table("fleet_rule_settings")
    with op.batch_alter_table("fleet_alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_fleet_alerts_vin_tenure_key")
        batch_op.drop_index("ix_fleet_alerts_account_id_start_at")

    op.drop_table("fleet_alerts")
    op.drop_table("fleet_vin_state")
    op.drop_table("fleet_partitions")
