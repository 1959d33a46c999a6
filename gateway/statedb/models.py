"""Declarative models of the state database.

The models describe the schema the migrations (``migrations/versions``) build; the migrations
are the authority at runtime, the models are what the code reads and writes through. A test
compares the two after ``upgrade()`` (Alembic's autogenerate diff must be empty), so they
cannot drift apart unnoticed.

Conventions, and why:

* Times are ``BIGINT`` epoch milliseconds (UTC), as in the telemetry store and the device
  contract: no time-zone or driver conversion can shift them, and SQLite and PostgreSQL
  compare them identically.
* Command ids are UUIDs stored as their 36-character text: the same value is the MQTT
  correlation data and the id in URLs, and SQLite has no UUID type.
* Status, event and confirmation are plain strings, not database enums or CHECK constraints:
  ``gateway.core.lifecycle`` is the single authority on which values exist and what may
  follow what, and a new status then needs no table rebuild on SQLite.
* Constraint and index names follow :data:`NAMING_CONVENTION`, so migrations can refer to
  them by name on both backends (SQLite's batch mode needs names to rebuild tables).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "NAMING_CONVENTION",
    "AccountRow",
    "ApiKeyRow",
    "AssistanceShareRow",
    "AuditRow",
    "Base",
    "BrokerAuthStateRow",
    "CommandJobRefusalRow",
    "CommandJobRow",
    "CommandRow",
    "CommandTransitionRow",
    "DealerConsentRow",
    "DriverAssignmentRow",
    "DriverRow",
    "EventRow",
    "FleetAlertDayRow",
    "FleetAlertRow",
    "FleetPartitionRow",
    "FleetPassRow",
    "FleetRow",
    "FleetRuleSettingsRow",
    "FleetTripDayRow",
    "FleetTripRow",
    "FleetVehicleRow",
    "FleetVinStateRow",
    "FleetWorkerRow",
    "GeofenceRow",
    "LoginThrottleRow",
    "MaintenanceNoticeRow",
    "RefreshTokenRow",
    "ServicePartnerRow",
    "ServicePlanRow",
    "UserRow",
    "VehicleGrantRow",
    "VehicleInvitationRow",
    "VehicleLifecycleEventRow",
    "VehicleLifecycleRow",
    "VehiclePairingAttemptRow",
    "VehicleRow",
    "VehicleTenureRow",
    "VehicleTransferRow",
    "WebhookDeliveryRow",
    "WebhookRow",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: longest accepted ``Idempotency-Key`` (the column is ``VARCHAR(255)``; the repository checks
#: the length itself because SQLite would store a longer one and PostgreSQL would refuse it)
MAX_IDEMPOTENCY_KEY_LENGTH = 255

# JSONB on PostgreSQL (compact, comparable, indexable later); JSON text elsewhere
_JSON = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments an ``INTEGER PRIMARY KEY`` (the rowid), not a BIGINT one
_BIGINT_PK = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every state-database table (one :class:`MetaData`)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CommandRow(Base):
    """One remote command and where it stands (one row per command, updated in place).

    The history of how it got there is in :class:`CommandTransitionRow`.
    """

    __tablename__ = "commands"
    __table_args__ = (
        # One command per (vehicle, holding period, Idempotency-Key): a retried request finds
        # the first one; a later holder of the VIN may use the same key (migration 0003).
        # NULL keys are distinct on both backends, so requests without a key never collide.
        # a key is per requesting user (decision 0023): another user cannot use it up
        UniqueConstraint("vin", "tenure", "requested_by", "idempotency_key"),
        # a vehicle's commands, newest first (and its queue, oldest first); also "vin indexed"
        Index("ix_commands_vin_created_at", "vin", "created_at"),
        # the expiry sweep: status IN (queued, sent) AND expires_at <= now
        Index("ix_commands_status_expires_at", "status", "expires_at"),
        # the confirmation watcher: status = succeeded AND confirmation = pending; the
        # result-timeout sweep (status = accepted) uses its leading column
        Index("ix_commands_status_confirmation", "status", "confirmation"),
        # a job's commands and its counts per status (migration 0006)
        Index("ix_commands_job_id_status", "job_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17))
    #: the VIN's holding period the command was made in (``vehicle_tenures.number``); 0:
    #: made before the first recorded one (migration 0003), seen by nobody but admins
    tenure: Mapped[int] = mapped_column(Integer, server_default="1")
    type: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(_JSON)
    status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(MAX_IDEMPOTENCY_KEY_LENGTH))
    #: SHA-256 (hex) of the request's canonical form, to tell a retry from a reused key
    request_hash: Mapped[str] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    result_timeout_ms: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int | None] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    #: pending | confirmed | unconfirmed | not_applicable (``ConfirmationState``)
    confirmation: Mapped[str] = mapped_column(String(16))
    confirmed_at: Mapped[int | None] = mapped_column(BigInteger)
    #: the unit's clock (its result's ``ts``) when it accepted: what confirmation compares
    #: the unit's samples with (migration 0004)
    unit_accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    #: the bulk command (``command_jobs.id``) this command is part of; None for a single one
    #: (migration 0006)
    job_id: Mapped[int | None] = mapped_column(BigInteger)


class CommandTransitionRow(Base):
    """One status change of one command; append-only (never updated or deleted).

    ``seq`` counts 1, 2, 3, ... per command (1 is the initial ``queued`` row, whose ``event``
    is NULL), so clients can poll for what is new with ``after_seq``. The UNIQUE
    ``(command_id, seq)`` constraint is also the index on ``command_id``: a second index on
    that column alone would only cost writes.
    """

    __tablename__ = "command_transitions"
    __table_args__ = (UniqueConstraint("command_id", "seq"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    command_id: Mapped[str] = mapped_column(String(36), ForeignKey("commands.id"))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    event: Mapped[str | None] = mapped_column(String(32))
    at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)


# --- accounts and access (issue 4; migration 0002) ------------------------------------------


class AccountRow(Base):
    """A tenant: an enterprise customer's ``organization`` or a person's ``private`` account.

    Every vehicle belongs to exactly one account; every user but an installation ``admin``
    belongs to one.
    """

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    #: organization | private
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


class UserRow(Base):
    """A person who logs in. ``role`` is one of admin, fleet_manager, fleet_viewer, owner,
    driver (``gateway.core.policy.Role``); ``account_id`` is NULL only for admins.

    ``token_version`` is part of every access token issued to the user; raising it (a
    password change, a reset, disabling) ends every access token issued before at once.
    Password guessing is slowed down per (user, client address) in
    :class:`LoginThrottleRow`.
    """

    __tablename__ = "users"
    __table_args__ = (Index("ix_users_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    #: stored lower-cased; unique
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(Text)
    #: argon2id, PHC string format
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)
    token_version: Mapped[int] = mapped_column(Integer, server_default="0")


class LoginThrottleRow(Base):
    """Wrong passwords for one user from one client address: after a few in a row, that
    address must wait longer and longer before its next attempt for this user is checked.
    Keyed by address too, so that someone elsewhere who knows the e-mail address cannot
    lock its owner out (migration 0003; before, the lock was per user)."""

    __tablename__ = "login_throttles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    remote_addr: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    locked_until: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class VehicleRow(Base):
    """A provisioned vehicle: who holds it now and its broker identity (user name = VIN).

    ``mqtt_password_hash`` is in Mosquitto's password-file format (PBKDF2-SHA512, ``$7$``),
    so the broker's password file is rendered from these rows without ever storing the
    password itself; NULL for a vehicle that authenticates by client certificate only.
    A revoked vehicle keeps its row (audit, history) with ``revoked_at`` set; it is left out
    of the broker's password file and ACL and the gateway drops what it still sends.
    ``tenure`` is the number of the current (or, once revoked, the last) holding period
    (:class:`VehicleTenureRow`), kept here so every request reads it with the vehicle.
    """

    __tablename__ = "vehicles"
    __table_args__ = (Index("ix_vehicles_account_id", "account_id"),)

    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    label: Mapped[str | None] = mapped_column(Text)
    mqtt_password_hash: Mapped[str | None] = mapped_column(Text)
    provisioned_at: Mapped[int] = mapped_column(BigInteger)
    provisioned_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    tenure: Mapped[int] = mapped_column(Integer, server_default="1")


class VehicleTenureRow(Base):
    """One holding period of a VIN: which account held it, from when until when.

    ``number`` counts 1, 2, 3, ... per VIN. Everything recorded for the vehicle (telemetry,
    events, quarantine entries in the telemetry store; commands, idempotency keys, grants
    and invitations here) carries the number of the period it was recorded in, and a holder
    reads only their own period. A period starts with a provisioning (``started_by``) and
    ends with a revocation (``end_reason`` ``revoked``); later kinds of start and end (sale,
    transfer, decommissioning) are new values of the same two columns
    (docs/decisions/0009-vehicle-ownership-periods.md).
    """

    __tablename__ = "vehicle_tenures"
    __table_args__ = (
        UniqueConstraint("vin", "number"),
        Index("ix_vehicle_tenures_account_id", "account_id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), ForeignKey("vehicles.vin"))
    number: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    started_at: Mapped[int] = mapped_column(BigInteger)
    started_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    #: why it ended: ``revoked``, ``transferred`` or ``decommissioned`` (NULL while it lasts)
    end_reason: Mapped[str | None] = mapped_column(String(32))


class VehicleGrantRow(Base):
    """An owner's (or fleet manager's) grant of one vehicle to one user of the vehicle's
    account (or to anyone who accepted an invitation), limited to the services in
    ``services``: ``read`` (state, history, the vehicle's commands) and remote services
    (command types). Revoked grants stay, with ``revoked_at``."""

    __tablename__ = "vehicle_grants"
    __table_args__ = (
        Index("ix_vehicle_grants_user_id", "user_id"),
        Index("ix_vehicle_grants_vin", "vin"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), ForeignKey("vehicles.vin"))
    #: the holding period it was given in (a grant ends with it)
    tenure: Mapped[int] = mapped_column(Integer, server_default="1")
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    #: JSON list: ``read`` and/or command type names the grantee may send
    services: Mapped[list[str]] = mapped_column(_JSON)
    granted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class VehicleInvitationRow(Base):
    """An offer to share a vehicle with whoever logs in with ``email``: it becomes a grant
    only when that person accepts it. Used for anyone outside the vehicle's account, so a
    stranger's car never appears in someone's view without their consent, and the answer
    to the inviter is the same whether the address has an account or not.

    ``status``: pending | accepted | declined | withdrawn; an invitation past
    ``expires_at`` or of an earlier holding period can no longer be accepted.
    """

    __tablename__ = "vehicle_invitations"
    __table_args__ = (
        Index("ix_vehicle_invitations_email", "email"),
        Index("ix_vehicle_invitations_vin", "vin"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17), ForeignKey("vehicles.vin"))
    tenure: Mapped[int] = mapped_column(Integer)
    #: stored lower-cased, like ``users.email``
    email: Mapped[str] = mapped_column(String(320))
    services: Mapped[list[str]] = mapped_column(_JSON)
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[int | None] = mapped_column(BigInteger)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("vehicle_grants.id"))
    #: the user who had ``email`` when the invitation was made: only they may answer it
    #: (decision 0023); NULL: nobody had it, accepting needs the token (its hash here)
    to_user_id: Mapped[int | None] = mapped_column(BigInteger)
    accept_token_hash: Mapped[str | None] = mapped_column(String(64))


class ApiKeyRow(Base):
    """An integration's API key, acting as ``user_id``. Only a SHA-256 of the key is kept
    (keys are 256-bit random, so a fast hash is enough); ``prefix`` is the key's public
    first part, to find the row and to show which key is which."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class RefreshTokenRow(Base):
    """One refresh token (only its SHA-256 is kept). Each use replaces it by a new one of
    the same ``family``; presenting a replaced token again means it was stolen, and the
    whole family is revoked (OAuth 2.0 refresh-token rotation with reuse detection)."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_user_id", "user_id"),
        Index("ix_refresh_tokens_family", "family"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    family: Mapped[str] = mapped_column(String(36))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    replaced_at: Mapped[int | None] = mapped_column(BigInteger)


class WebSessionRow(Base):
    """One web dashboard login (the ``tg_session`` cookie; only its SHA-256 is kept). Logging
    out revokes it, and so does ending the user's sessions (a password change or reset,
    disabling): a copied cookie stops working on the server, not only in the browser
    (migration 0013, docs/decisions/0025-web-dashboard-rest.md)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class AuditRow(Base):
    """One entry of the append-only audit log (database triggers refuse UPDATE and DELETE).

    ``actor`` is a readable "who" (``user:7 alice@example.com``, ``api_key:tgk_ab12cd34``,
    ``system``); ``account_id`` is the account the entry concerns, so a fleet manager can
    read their organization's entries. Secrets never go into ``detail``.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_account_id_id", "account_id", "id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)
    actor_user_id: Mapped[int | None] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(Text)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    #: e.g. login, login_failed, token_refresh, command_create, grant_create, vehicle_provision
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    #: ok | denied | failed
    outcome: Mapped[str] = mapped_column(String(16))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(_JSON)


class BrokerAuthStateRow(Base):
    """One row (id 1): ``version`` grows with every change to the vehicles' broker
    identities, so the broker-side sync polls one integer, not the whole table."""

    __tablename__ = "broker_auth_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


# --- fleet management (issue 13; migration 0005_fleets) --------------------------------------


class FleetRow(Base):
    """A fleet or group of an organization's vehicles (``kind``: fleet | group); a vehicle
    may be in several. ``speed_limit_kmh`` is the fleet's limit for the overspeed rule (the
    lowest of a vehicle's fleets applies)."""

    __tablename__ = "fleets"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    speed_limit_kmh: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[int] = mapped_column(BigInteger)


class FleetVehicleRow(Base):
    """Membership of one vehicle in one fleet or group."""

    __tablename__ = "fleet_vehicles"
    __table_args__ = (Index("ix_fleet_vehicles_vin", "vin"),)

    fleet_id: Mapped[int] = mapped_column(ForeignKey("fleets.id"), primary_key=True)
    vin: Mapped[str] = mapped_column(String(17), ForeignKey("vehicles.vin"), primary_key=True)
    added_at: Mapped[int] = mapped_column(BigInteger)


class DriverRow(Base):
    """A person who drives the organization's vehicles, with an optional user account."""

    __tablename__ = "drivers"
    __table_args__ = (Index("ix_drivers_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)


class DriverAssignmentRow(Base):
    """A driver assigned to a vehicle from ``start_at`` until ``end_at`` (NULL: open
    ended); every trip and alert names the driver assigned at its start."""

    __tablename__ = "driver_assignments"
    __table_args__ = (
        Index("ix_driver_assignments_vin_start_at", "vin", "start_at"),
        Index("ix_driver_assignments_driver_id", "driver_id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    driver_id: Mapped[int] = mapped_column(ForeignKey("drivers.id"))
    vin: Mapped[str] = mapped_column(String(17), ForeignKey("vehicles.vin"))
    start_at: Mapped[int] = mapped_column(BigInteger)
    end_at: Mapped[int | None] = mapped_column(BigInteger)


class GeofenceRow(Base):
    """An organization's geofence: a GeoJSON ``Feature`` (polygon, or point with
    ``properties.radius_m``) as accepted by ``gateway.core.fleet.geo``, an optional speed
    limit and an optional active window (``{"start": "HH:MM", "end": "HH:MM", "tz": ...,
    "weekdays": [0..6]}``)."""

    __tablename__ = "geofences"
    __table_args__ = (Index("ix_geofences_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    geometry: Mapped[dict[str, Any]] = mapped_column(_JSON)
    speed_limit_kmh: Mapped[float | None] = mapped_column(Float)
    active_window: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    alert_enter: Mapped[bool] = mapped_column(Boolean)
    alert_exit: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FleetRuleSettingsRow(Base):
    """An organization's rule thresholds (the fields of ``RuleSettings`` and
    ``TripSettings`` it changed from the defaults), as JSON."""

    __tablename__ = "fleet_rule_settings"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(_JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FleetAlertRow(Base):
    """One alert of the fleet rules (``gateway.core.fleet.rules.Alert``) for one vehicle's
    holding period; open while ``end_at`` is NULL. ``cleared_at``: a person closed it
    (the rule's condition may still last; the rules then do not raise it again until it
    clears by itself)."""

    __tablename__ = "fleet_alerts"
    __table_args__ = (
        Index("ix_fleet_alerts_account_id_start_at", "account_id", "start_at"),
        Index("ix_fleet_alerts_vin_tenure_key", "vin", "tenure", "key"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(48))
    key: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    start_at: Mapped[int] = mapped_column(BigInteger)
    end_at: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[dict[str, Any]] = mapped_column(_JSON)
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    acknowledged_by: Mapped[int | None] = mapped_column(BigInteger)
    acknowledged_at: Mapped[int | None] = mapped_column(BigInteger)
    cleared_by: Mapped[int | None] = mapped_column(BigInteger)
    cleared_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FleetTripDayRow(Base):
    """The daily rollup of ``fleet_trips``: per vehicle's holding period, UTC day (days
    since the epoch, of the trip's start) and driver, the trips' count and sums. Kept by
    the rules worker in the transaction that stores or replaces trips (migration 0010), so
    a 30-day report of 1,000 vehicles reads 30,000 rows, not 150,000 trips."""

    __tablename__ = "fleet_trip_days"
    __table_args__ = (
        # covering: a report reads the rollup from the index alone
        Index(
            "ix_fleet_trip_days_account_id_day",
            *("account_id", "day", "vin", "tenure", "driver_id", "trips", "duration_ms"),
            *("distance_m", "max_speed_kmh", "energy_used_pct", "fuel_used_pct"),
        ),
        Index("ix_fleet_trip_days_vin_tenure_day", "vin", "tenure", "day"),
        Index("ix_fleet_trip_days_driver_id_day", "driver_id", "day"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    day: Mapped[int] = mapped_column(Integer)
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    trips: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    distance_m: Mapped[float] = mapped_column(Float)
    max_speed_kmh: Mapped[float | None] = mapped_column(Float)
    energy_used_pct: Mapped[float | None] = mapped_column(Float)
    fuel_used_pct: Mapped[float | None] = mapped_column(Float)


class FleetAlertDayRow(Base):
    """The daily rollup of ``fleet_alerts`` for reports: per vehicle's holding period, UTC
    day (days since the epoch, of the alert's start) and driver, the alerts' count and idle
    time (the duration of the ended ``idling`` alerts). Kept by the rules worker in the
    transaction that stores or changes alerts (migration 0015, decision 0030), so a report
    reads whole days from a covering index instead of every alert's row."""

    __tablename__ = "fleet_alert_days"
    __table_args__ = (
        # covering: a report reads the rollup from the index alone
        Index(
            "ix_fleet_alert_days_account_id_day",
            *("account_id", "day", "vin", "tenure", "driver_id", "alerts", "idle_ms"),
        ),
        Index("ix_fleet_alert_days_vin_tenure_day", "vin", "tenure", "day"),
        Index("ix_fleet_alert_days_driver_id_day", "driver_id", "day"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    day: Mapped[int] = mapped_column(Integer)
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    alerts: Mapped[int] = mapped_column(Integer)
    idle_ms: Mapped[int] = mapped_column(BigInteger)


class FleetTripRow(Base):
    """One trip (``gateway.core.fleet.trips.Trip``) of one vehicle's holding period. A
    recompute after late samples replaces a vehicle's trips from a start time on."""

    __tablename__ = "fleet_trips"
    __table_args__ = (
        Index("ix_fleet_trips_vin_tenure_start_at", "vin", "tenure", "start_at"),
        Index("ix_fleet_trips_account_id_start_at", "account_id", "start_at"),
        Index("ix_fleet_trips_driver_id_start_at", "driver_id", "start_at"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    start_at: Mapped[int] = mapped_column(BigInteger)
    end_at: Mapped[int] = mapped_column(BigInteger)
    start_lon: Mapped[float | None] = mapped_column(Float)
    start_lat: Mapped[float | None] = mapped_column(Float)
    end_lon: Mapped[float | None] = mapped_column(Float)
    end_lat: Mapped[float | None] = mapped_column(Float)
    distance_m: Mapped[float] = mapped_column(Float)
    duration_ms: Mapped[int] = mapped_column(BigInteger)
    max_speed_kmh: Mapped[float | None] = mapped_column(Float)
    avg_speed_kmh: Mapped[float] = mapped_column(Float)
    energy_used_pct: Mapped[float | None] = mapped_column(Float)
    fuel_used_pct: Mapped[float | None] = mapped_column(Float)
    ended_by: Mapped[str] = mapped_column(String(16))
    driver_id: Mapped[int | None] = mapped_column(BigInteger)
    prior_ignition: Mapped[bool | None] = mapped_column(Boolean)
    prior_moving: Mapped[bool | None] = mapped_column(Boolean)


class FleetVinStateRow(Base):
    """The rules' and the trip detector's state of one vehicle's holding period, as JSON
    (``gateway.core.fleet.state``), stored in the transaction that stores its effects."""

    __tablename__ = "fleet_vin_state"

    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    tenure: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_state: Mapped[dict[str, Any]] = mapped_column(_JSON)
    trip_state: Mapped[dict[str, Any]] = mapped_column(_JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class FleetPartitionRow(Base):
    """One partition of the VINs (``hash(VIN) mod P``) for the rules worker: who holds it
    until when (a lease, renewed while the holder lives) and how far in the telemetry
    store's log (sample and event row ids) its VINs have been evaluated."""

    __tablename__ = "fleet_partitions"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[int] = mapped_column(BigInteger)
    sample_cursor: Mapped[int] = mapped_column(BigInteger)
    event_cursor: Mapped[int] = mapped_column(BigInteger)
    #: the cursor the partition's stored vehicle states are as of (migration 0018): the
    #: worker writes them behind; the passes since are in ``fleet_passes``
    states_sample_cursor: Mapped[int] = mapped_column(BigInteger, server_default="0")
    states_event_cursor: Mapped[int] = mapped_column(BigInteger, server_default="0")


class FleetPassRow(Base):
    """A pass of the fleet worker committed for a partition whose states it did not write
    (migration 0018, decision 0050): its new cursor, its tick's time and the vehicles whose
    rows it skipped (not provisioned then). A new holder of the partition replays these
    passes over the stored states; they are deleted when the states are written."""

    __tablename__ = "fleet_passes"
    __table_args__ = (Index("ix_fleet_passes_partition_id", "partition", "id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    partition: Mapped[int] = mapped_column(Integer)
    sample_cursor: Mapped[int] = mapped_column(BigInteger)
    event_cursor: Mapped[int] = mapped_column(BigInteger)
    tick_at: Mapped[int | None] = mapped_column(BigInteger)
    skipped: Mapped[list[Any] | None] = mapped_column(_JSON)


class FleetWorkerRow(Base):
    """A running rules worker (migration 0016): it renews ``alive_until`` with its leases,
    so every worker knows how many share the partitions and takes only its fair share."""

    __tablename__ = "fleet_workers"

    owner: Mapped[str] = mapped_column(String(200), primary_key=True)
    alive_until: Mapped[int] = mapped_column(BigInteger)


# --- bulk commands and notifications (migration 0006) ---------------------------------------


class CommandJobRow(Base):
    """One bulk command: the same command to many vehicles (``commands.job_id`` points here).

    ``account_id`` is the organization the job belongs to (the caller's; an administrator's
    job takes the account of its vehicles when they share one, else NULL: administrators
    only). Counts per status are not stored: they are counted from ``commands`` (index
    ``ix_commands_job_id_status``), so they cannot drift from the commands themselves.
    """

    __tablename__ = "command_jobs"
    __table_args__ = (
        # a page of an account's jobs, newest first; the running jobs of an account
        Index("ix_command_jobs_account_id_id", "account_id", "id"),
        Index("ix_command_jobs_finished_at", "finished_at"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    created_by: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(_JSON)
    #: what the request named: {"vins": n} or {"fleet_id": id}
    target: Mapped[dict[str, Any]] = mapped_column(_JSON)
    total: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger)
    #: when its last command reached a final status (NULL: running)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)


class CommandJobKeyRow(Base):
    """An ``Idempotency-Key`` of ``POST /v1/command-jobs`` (decision 0017): per scope (the
    caller, ``user:<id>``, since decision 0023; ``account:<id>`` rows of earlier versions
    expire unused), the hash of the request it first came with and the job it made;
    honoured for 24 hours."""

    __tablename__ = "command_job_keys"
    __table_args__ = (Index("ix_command_job_keys_created_at", "created_at"),)

    scope: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("command_jobs.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)


class IntegrationCredentialRow(Base):
    """An organization's integration credential (decision 0017): MQTT user name
    ``integration-<id>``, allowed to read the organization's alert topic only. The
    password is stored as a Mosquitto hash (shown once, at creation)."""

    __tablename__ = "integration_credentials"
    # an id names a broker identity (``integration-<id>``) and its organization's ACL: it must
    # never come back for another organization after a delete (SQLite reuses the highest
    # rowid without AUTOINCREMENT; PostgreSQL's sequence never does)
    __table_args__ = (
        Index("ix_integration_credentials_account_id", "account_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("accounts.id"))
    password_hash: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class NotifyCursorRow(Base):
    """A notification consumer's place in the event log and its lease (the MQTT fan-out:
    one API process at a time publishes, and a restart resumes after ``event_id``)."""

    __tablename__ = "notify_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[int] = mapped_column(BigInteger)


class CommandJobRefusalRow(Base):
    """A vehicle of a job that got no command, and why (``not_permitted``,
    ``vehicle_moving``, ``vehicle_rate_limited``, ...)."""

    __tablename__ = "command_job_refusals"
    __table_args__ = (UniqueConstraint("job_id", "vin"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("command_jobs.id"))
    vin: Mapped[str] = mapped_column(String(17))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class EventRow(Base):
    """One notification (a command update, a job's end; alerts and trips later): the
    bounded replay buffer of the live stream and the source of webhook deliveries.

    ``id`` order is commit order (writers serialize on an advisory lock on PostgreSQL,
    on the write lock on SQLite), so a reader that has seen id N never misses one below N.
    ``account_id`` scopes it to an organization (NULL: administrators only);
    ``actor_user_id`` is who caused it (a driver sees the events of their own commands).
    """

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_at", "at"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_user_id: Mapped[int | None] = mapped_column(BigInteger)
    data: Mapped[dict[str, Any]] = mapped_column(_JSON)


class WebhookRow(Base):
    """An organization's webhook: where its events are POSTed, signed with ``secret``
    (kept in clear: the gateway must compute the HMAC; shown to the caller once)."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_account_id", "account_id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    url: Mapped[str] = mapped_column(Text)
    #: event types delivered (["*"]: all)
    event_types: Mapped[list[str]] = mapped_column(_JSON)
    secret: Mapped[str] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDeliveryRow(Base):
    """One event to one webhook: its body (fixed at creation, so every attempt signs the
    same bytes), its attempts and where it stands (``pending``, ``delivered``,
    ``failed``)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # the worker's queue: pending deliveries due first
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    webhook_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhooks.id"))
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    next_attempt_at: Mapped[int | None] = mapped_column(BigInteger)
    last_attempt_at: Mapped[int | None] = mapped_column(BigInteger)
    #: HTTP status of the last attempt (NULL: no answer)
    response_status: Mapped[int | None] = mapped_column(Integer)
    #: what went wrong last (connection refused, timeout, HTTP 500, refused address ...)
    error: Mapped[str | None] = mapped_column(Text)


class VehicleLifecycleRow(Base):
    """What the lifecycle registry knows of a VIN beyond who holds it (that is the
    ``vehicles`` row's): whether the maker registered it (``registered_at``; NULL for a
    vehicle provisioned without registration, whose row a later lifecycle change made),
    its pairing code (a hash; single use) and the guesses against it, a running service,
    and its decommissioning. ``gateway.core.vehicle_lifecycle`` derives the state from this
    and the ``vehicles`` row (docs/decisions/0021-vehicle-lifecycle.md)."""

    __tablename__ = "vehicle_lifecycle"

    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    registered_at: Mapped[int | None] = mapped_column(BigInteger)
    registered_by: Mapped[int | None] = mapped_column(BigInteger)
    #: SHA-256 (hex) of the VIN and the normalized code; NULL: no code open (used, or none)
    pairing_code_hash: Mapped[str | None] = mapped_column(String(64))
    pairing_code_issued_at: Mapped[int | None] = mapped_column(BigInteger)
    #: wrong codes in a row since the last issue or claim, and until when the VIN waits
    pairing_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    pairing_locked_until: Mapped[int | None] = mapped_column(BigInteger)
    #: the workshop's account while the car is in service, and when its access ends
    service_account_id: Mapped[int | None] = mapped_column(BigInteger)
    service_until: Mapped[int | None] = mapped_column(BigInteger)
    decommissioned_at: Mapped[int | None] = mapped_column(BigInteger)


class VehicleLifecycleEventRow(Base):
    """One change of a vehicle's life (registration, claim, provisioning, transfer, service,
    release, decommissioning): who (``actor_user_id``; NULL: an operator's tool), why
    (``reason``, as they gave it), from which state to which, and the holder and holding
    period after it. Written in the transaction of the change; never updated."""

    __tablename__ = "vehicle_lifecycle_events"
    __table_args__ = (Index("ix_vehicle_lifecycle_events_vin_id", "vin", "id"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    at: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(32))
    to_state: Mapped[str] = mapped_column(String(32))
    actor_user_id: Mapped[int | None] = mapped_column(BigInteger)
    account_id: Mapped[int | None] = mapped_column(BigInteger)
    tenure: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(_JSON)


class VehicleTransferRow(Base):
    """An ownership transfer offered by the holder of ``vin`` (in period ``tenure``) to
    whoever logs in with ``to_email`` (as invitations, decision 0009): ``pending`` until
    the receiver accepts or declines, the holder cancels, or ``expires_at`` passes;
    ``to_account_id`` is the account that accepted it."""

    __tablename__ = "vehicle_transfers"
    __table_args__ = (
        Index("ix_vehicle_transfers_vin", "vin"),
        Index("ix_vehicle_transfers_to_email", "to_email"),
        Index("ix_vehicle_transfers_from_account_id", "from_account_id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    from_account_id: Mapped[int] = mapped_column(BigInteger)
    #: stored lower-cased, like ``users.email``
    to_email: Mapped[str] = mapped_column(String(320))
    to_account_id: Mapped[int | None] = mapped_column(BigInteger)
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    decided_at: Mapped[int | None] = mapped_column(BigInteger)
    decided_by: Mapped[int | None] = mapped_column(BigInteger)
    #: the user who had ``to_email`` when the offer was made: only they may take it
    #: (decision 0023); NULL: nobody had it, the receiver needs the claim token
    to_user_id: Mapped[int | None] = mapped_column(BigInteger)
    #: SHA-256 (hex) of the one-time claim token the offerer was given to pass on
    claim_token_hash: Mapped[str | None] = mapped_column(String(64))


class VehiclePairingAttemptRow(Base):
    """Wrong pairing codes for ``vin`` claimed into ``account_id`` since the VIN's code was
    last issued or used, and until when that account waits (decision 0023): one account's
    guesses hold up that account only."""

    __tablename__ = "vehicle_pairing_attempts"

    vin: Mapped[str] = mapped_column(String(17), primary_key=True)
    account_id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, server_default="0")
    locked_until: Mapped[int | None] = mapped_column(BigInteger)


class AssistanceShareRow(Base):
    """A roadside-assistance share: a partner (``partner``, as the owner named it) reads the
    vehicle's position and the state that matters for help, through a link with its own
    token (``token_hash``: SHA-256 of it), until ``expires_at`` or until the owner ends it
    (``ended_at``), and only within the holding period it was made in (``tenure``)."""

    __tablename__ = "assistance_shares"
    __table_args__ = (
        UniqueConstraint("token_hash"),
        Index("ix_assistance_shares_vin_id", "vin", "id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(BigInteger)
    token_hash: Mapped[str] = mapped_column(String(64))
    partner: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_by: Mapped[int | None] = mapped_column(BigInteger)


class ServicePartnerRow(Base):
    """An organization account the installation registered as a service partner (a dealer
    or workshop, issue 16): owners pick their dealer among these."""

    __tablename__ = "service_partners"

    account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[int | None] = mapped_column(BigInteger)


class DealerConsentRow(Base):
    """A holder's consent that a dealer (``dealer_account_id``) sees the vehicle's
    diagnostics and gets its maintenance notices, within one holding period, until
    ``expires_at`` (None: until withdrawn) or until withdrawn (``ended_at``)."""

    __tablename__ = "dealer_consents"
    __table_args__ = (
        Index("ix_dealer_consents_vin_tenure", "vin", "tenure"),
        Index("ix_dealer_consents_dealer_account_id", "dealer_account_id"),
    )

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(BigInteger)
    dealer_account_id: Mapped[int] = mapped_column(BigInteger)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_at: Mapped[int | None] = mapped_column(BigInteger)
    ended_by: Mapped[int | None] = mapped_column(BigInteger)


class ServicePlanRow(Base):
    """A vehicle model's service plan (``gateway.core.maintenance``): the model is the
    start of the VIN (``vin_prefix``; empty: every model without a plan of its own)."""

    __tablename__ = "service_plans"
    __table_args__ = (UniqueConstraint("vin_prefix"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text)
    vin_prefix: Mapped[str] = mapped_column(String(17))
    every_km: Mapped[int | None] = mapped_column(Integer)
    every_months: Mapped[int | None] = mapped_column(Integer)
    fault_codes: Mapped[list[str]] = mapped_column(_JSON)
    updated_at: Mapped[int] = mapped_column(BigInteger)
    updated_by: Mapped[int | None] = mapped_column(BigInteger)


class MaintenanceNoticeRow(Base):
    """A maintenance item found due in a holding period (its ``key``, see
    ``gateway.core.maintenance``), notified once; ``done_at``: a service ended after it."""

    __tablename__ = "maintenance_notices"
    __table_args__ = (UniqueConstraint("vin", "tenure", "key"),)

    id: Mapped[int] = mapped_column(_BIGINT_PK, primary_key=True, autoincrement=True)
    vin: Mapped[str] = mapped_column(String(17))
    tenure: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[int] = mapped_column(BigInteger)
    done_at: Mapped[int | None] = mapped_column(BigInteger)
