"""The state database: what the gateway decides and must remember (remote commands;
accounts, users, vehicles and who may use them; the audit log; fleets, geofences, alerts
and trips), as opposed to what vehicles report (the telemetry store, ``gateway.store``).

Relational, through SQLAlchemy 2.0, with Alembic migrations. SQLite is the embedded default
(``state.db`` in the data directory, no server to run); PostgreSQL is used when configured by
URL, so several gateway hosts can share one state. The state database is small and written
rarely, so portability and a real migration history matter more here than the last bit of
speed, which is why it uses an ORM and the telemetry store does not.

Layout:
    database.py   ``StateDatabase(url)``: engine (SQLite pragmas, psycopg 3), session factories,
                  ``upgrade()`` to the newest schema under a cross-process lock, ``default_url``
    models.py     declarative models: ``commands`` and ``command_transitions``; accounts,
                  users, vehicles and their holding periods, grants, invitations, API keys,
                  refresh tokens, login throttles, the audit log and the broker-identity
                  version
    commands.py   ``CommandRepository``: create (idempotent), read, apply lifecycle events,
                  the sweeps for expiry, result timeouts and confirmation
    accounts.py   ``AccountRepository``: accounts, users (login throttling per address),
                  vehicles, their holding periods (tenures) and broker identities, grants,
                  invitations, API keys, refresh-token rotation with reuse detection
    audit.py      ``AuditLog``: the append-only audit log (the database refuses changes)
    fleets.py     ``FleetRepository``: fleets and groups, drivers and assignments, geofences,
                  per-organization rule settings (issue 13)
    fleet_log.py  ``FleetLog``: alerts and trips, the rules worker's per-vehicle state and
                  partition leases, stored per partition step in one transaction
    migrations/   the Alembic environment (env.py, script.py.mako, versions/), run from code:
                  no ``alembic.ini``

Imports sqlalchemy, alembic, ``gateway.core`` (the command lifecycle; through it ``schemas``)
and ``gateway.errors``; imported by the command service and the API, never the other way
round (docs/decisions/0013-architecture-step.md).
"""

from gateway.statedb.accounts import (
    AccountRecord,
    AccountRepository,
    ApiKeyRecord,
    Conflict,
    DuplicateApiKeyPrefix,
    DuplicateEmail,
    GrantRecord,
    InvitationClosed,
    InvitationRecord,
    LoginThrottle,
    NotFound,
    RefreshOutcome,
    RefreshTokenRecord,
    SessionsEnded,
    TenureRecord,
    UserLimitReached,
    UserRecord,
    VehicleAlreadyProvisioned,
    VehicleRecord,
    VehicleRevoked,
    normalize_email,
)
from gateway.statedb.audit import AuditLog, AuditRecord
from gateway.statedb.commands import (
    CommandNotFound,
    CommandRecord,
    CommandRepository,
    ConfirmationState,
    IdempotencyConflict,
    TenureEnded,
    TransitionRecord,
    request_hash,
)
from gateway.statedb.database import StateDatabase, default_url

__all__ = [
    "AccountRecord",
    "AccountRepository",
    "ApiKeyRecord",
    "AuditLog",
    "AuditRecord",
    "CommandNotFound",
    "CommandRecord",
    "CommandRepository",
    "ConfirmationState",
    "Conflict",
    "DuplicateApiKeyPrefix",
    "DuplicateEmail",
    "GrantRecord",
    "IdempotencyConflict",
    "InvitationClosed",
    "InvitationRecord",
    "LoginThrottle",
    "NotFound",
    "RefreshOutcome",
    "RefreshTokenRecord",
    "SessionsEnded",
    "StateDatabase",
    "TenureEnded",
    "TenureRecord",
    "TransitionRecord",
    "UserLimitReached",
    "UserRecord",
    "VehicleAlreadyProvisioned",
    "VehicleRecord",
    "VehicleRevoked",
    "default_url",
    "normalize_email",
    "request_hash",
]
