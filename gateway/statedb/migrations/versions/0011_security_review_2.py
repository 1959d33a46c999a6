"""The second security review's storage (docs/decisions/0023-security-review-2.md).

Revision ID: 0011_security_review_2
Revises: 0010_fleet_trip_days
Create Date: 2026-12-07

Why:

- ``vehicle_pairing_attempts``: wrong pairing codes counted per (VIN, account) as well as
  per VIN, so one account's guesses no longer lock the VIN's buyer out.
- ``vehicle_transfers.to_user_id`` and ``claim_token_hash``: an offer is bound to the user
  who had the e-mail address when it was made, or, when nobody had it, to a one-time claim
  token the offerer hands over (not to whoever registers the address first).
- ``vehicle_invitations.to_user_id`` and ``accept_token_hash``: the same for invitations
  to share a vehicle.
- ``commands``: an ``Idempotency-Key`` is per requesting user (``requested_by``), so a
  driver sharing the vehicle cannot use up its owner's key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0011_security_review_2"
down_revision: str | Sequence[str] | None = "0010_fleet_trip_days"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACCOUNT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vehicle_pairing_attempts",
        sa.Column("vin", sa.String(length=17), nullable=False),
        sa.Column("account_id", _ACCOUNT, nullable=False),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("vin", "account_id", name=op.f("pk_vehicle_pairing_attempts")),
    )
    with op.batch_alter_table("vehicle_transfers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("to_user_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("claim_token_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("vehicle_invitations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("to_user_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("accept_token_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("commands", recreate="auto") as batch:
        batch.drop_constraint("uq_commands_vin_tenure_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_commands_vin_tenure_requested_by_idempotency_key",
            ["vin", "tenure", "requested_by", "idempotency_key"],
        )


def downgrade() -> None:
    with op.batch_alter_table("commands", recreate="auto") as batch:
        batch.drop_constraint("uq_commands_vin_tenure_requested_by_idempotency_key", type_="unique")
        batch.create_unique_constraint(
            "uq_commands_vin_tenure_idempotency_key", ["vin", "tenure", "idempotency_key"]
        )
    with op.batch_alter_table("vehicle_invitations", schema=None) as batch_op:
        batch_op.drop_column("accept_token_hash")
        batch_op.drop_column("to_user_id")
    with op.batch_alter_table("vehicle_transfers", schema=None) as batch_op:
        batch_op.drop_column("claim_token_hash")
        batch_op.drop_column("to_user_id")
    op.drop_table("vehicle_pairing_attempts")
