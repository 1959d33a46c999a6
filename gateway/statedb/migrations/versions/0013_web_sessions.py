"""Web dashboard sessions kept on the server (issue 14).

Revision ID: 0013_web_sessions
Revises: 0011_security_review_2
Create Date: 2026-12-07

Why: the dashboard's session cookie was a stateless access token, so logging out only
deleted it from the browser and a copied cookie kept working until it expired (8 h).
``web_sessions`` holds one row per dashboard login (the SHA-256 of its random token):
logging out revokes it, and so does ending the user's sessions (a password change or reset,
disabling), so a stolen cookie stops working at once
(docs/decisions/0025-web-dashboard-rest.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic
revision: str = "0013_web_sessions"
down_revision: str | Sequence[str] | None = "0011_security_review_2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", _BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("user_id", _BIGINT_PK, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_web_sessions_user_id", table_name="web_sessions")
    op.drop_table("web_sessions")
