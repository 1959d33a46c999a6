"""Alembic environment of the state database, run only through ``StateDatabase.upgrade()``
(or ``alembic.command`` with ``gateway.statedb.database.alembic_config(connection)``).

It opens no connection of its own: the caller passes one in ``config.attributes`` with a
transaction already begun and the migration lock held, so Alembic runs every revision inside
that transaction and the caller commits. Offline (SQL script) mode is not supported: the
gateway migrates its own database on start.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from gateway.statedb.models import Base


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the state database migrations need a connection in config.attributes; "
            "run them with gateway.statedb.StateDatabase(url).upgrade()"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: autogenerate "move and copy" batch operations
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported for the state database")
run_migrations_online()
