"""Accounts, users, vehicles, grants, API keys, refresh tokens and the audit log (issue 4).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Why: the API gets authentication and per-account authorization, and the broker's vehicle
identities move from a static file into the database, so every gateway host sees the same
users, vehicles and grants. Written by hand like 0001 and checked against the models by
``tests/test_statedb.py`` (the autogenerate diff after upgrade must be empty).

Two things the models cannot express, hence only here:

* ``broker_auth_state`` gets its single row (id 1, version 0): the repository only ever
  increments it, so it must exist before the first vehicle is provisioned.
* ``audit_log`` is append-only in the database itself, not only by convention in the code:
  triggers refuse UPDATE and DELETE on both backends (and TRUNCATE on PostgreSQL, which
  skips row triggers), so neither a bug nor a hand-typed statement can rewrite history.
  Both backends report the refusal as an integrity error (SQLite's ``RAISE(ABORT)`` is
  SQLITE_CONSTRAINT; the PostgreSQL function raises SQLSTATE 23000) so callers see one kind
  of error. A later migration that rebuilds ``audit_log`` in SQLite batch mode (copy and
  move) drops its triggers and must create them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _bigint_pk() -> sa.types.TypeEngine[int]:
    """BIGINT, but INTEGER on SQLite: only an ``INTEGER PRIMARY KEY`` auto-increments there.

    Also the type of every column referring to such a key (as in the models, where a
    ``ForeignKey`` column takes the type of the column it refers to).
    """
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    """JSONB on PostgreSQL, JSON text elsewhere (as ``models._JSON``)."""
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


_SQLITE_TRIGGERS = (
    """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit_log is append-only');
    END
    """,
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'audit_log is append-only');
    END
    """,
)

_POSTGRESQL_TRIGGERS = (
    """
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
    """
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()
    """,
    # TRUNCATE fires no row triggers; a statement trigger catches it
    """
    CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
    """,
)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
    )

    op.create_table(
        "users",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("account_id", _bigint_pk(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("disabled_at", sa.BigInteger(), nullable=True),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_users_account_id_accounts"
        ),
        # e-mails are stored lower-cased, so this is case-insensitive uniqueness
        sa.UniqueConstraint("email", name="uq_users_email"),
    )
    op.create_index("ix_users_account_id", "users", ["account_id"])

    op.create_table(
        "vehicles",
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("account_id", _bigint_pk(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("mqtt_password_hash", sa.Text(), nullable=True),
        sa.Column("provisioned_at", sa.BigInteger(), nullable=False),
        sa.Column("provisioned_by", _bigint_pk(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("vin", name="pk_vehicles"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_vehicles_account_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["provisioned_by"], ["users.id"], name="fk_vehicles_provisioned_by_users"
        ),
    )
    op.create_index("ix_vehicles_account_id", "vehicles", ["account_id"])

    op.create_table(
        "vehicle_grants",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("vin", sa.String(17), nullable=False),
        sa.Column("user_id", _bigint_pk(), nullable=False),
        sa.Column("services", _json(), nullable=False),
        sa.Column("granted_by", _bigint_pk(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_vehicle_grants"),
        sa.ForeignKeyConstraint(["vin"], ["vehicles.vin"], name="fk_vehicle_grants_vin_vehicles"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_vehicle_grants_user_id_users"),
        sa.ForeignKeyConstraint(
            ["granted_by"], ["users.id"], name="fk_vehicle_grants_granted_by_users"
        ),
    )
    op.create_index("ix_vehicle_grants_user_id", "vehicle_grants", ["user_id"])
    op.create_index("ix_vehicle_grants_vin", "vehicle_grants", ["vin"])

    op.create_table(
        "api_keys",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("user_id", _bigint_pk(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.UniqueConstraint("prefix", name="uq_api_keys_prefix"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])

    op.create_table(
        "refresh_tokens",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("user_id", _bigint_pk(), nullable=False),
        sa.Column("family", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.Column("replaced_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_refresh_tokens"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_refresh_tokens_user_id_users"),
        sa.UniqueConstraint("token_hash", name="uq_refresh_tokens_token_hash"),
    )
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])

    # no foreign keys on purpose: an audit entry must outlive (and never block) the user or
    # account it mentions
    op.create_table(
        "audit_log",
        sa.Column("id", _bigint_pk(), autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("actor_user_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("remote_addr", sa.String(64), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_account_id_id", "audit_log", ["account_id", "id"])

    broker_auth_state = op.create_table(
        "broker_auth_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_broker_auth_state"),
    )
    op.bulk_insert(broker_auth_state, [{"id": 1, "version": 0}])

    statements = (
        _POSTGRESQL_TRIGGERS if op.get_bind().dialect.name == "postgresql" else _SQLITE_TRIGGERS
    )
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER audit_log_no_delete ON audit_log")
        op.execute("DROP TRIGGER audit_log_no_update ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER audit_log_no_delete")
        op.execute("DROP TRIGGER audit_log_no_update")

    op.drop_table("broker_auth_state")
    op.drop_index("ix_audit_log_account_id_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_refresh_tokens_family", table_name="refresh_tokens")
    op.drop_index("ix_refresh_tokens_user_id", table_name="refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("ix_vehicle_grants_vin", table_name="vehicle_grants")
    op.drop_index("ix_vehicle_grants_user_id", table_name="vehicle_grants")
    op.drop_table("vehicle_grants")
    op.drop_index("ix_vehicles_account_id", table_name="vehicles")
    op.drop_table("vehicles")
    op.drop_index("ix_users_account_id", table_name="users")
    op.drop_table("users")
    op.drop_table("accounts")
