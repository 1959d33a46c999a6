"""The account repository: accounts, users, vehicles and their holding periods, grants,
invitations, API keys, refresh tokens and login throttling.

The same rules as :mod:`gateway.statedb.commands`: every method is one short transaction of
its own and returns frozen records, never ORM objects, so records cross threads freely and
nothing writes behind the repository's back. Times are epoch milliseconds passed in by the
caller (``now=``), so tests (and the API, with its one clock) decide what "now" is.

What this module decides, and what it leaves to others:

* **Who may do what** is :mod:`gateway.core.policy`'s question; this module stores roles and
  account kinds as the plain strings it is given (the policy's ``Role`` and ``AccountKind``
  are ``StrEnum`` values and can be passed as they are). It does check what the database
  alone would get wrong or report badly: unknown ids (:class:`NotFound` instead of a
  foreign-key error that SQLite and PostgreSQL word differently), duplicate e-mails in any
  case, a second provisioning of an active vehicle.
* **Secrets** never reach it: it receives and keeps only hashes (argon2id for passwords,
  Mosquitto ``$7$`` for broker passwords, SHA-256 for API keys and refresh tokens; see
  :mod:`gateway.auth`). Records leave every hash out of their ``repr`` so a logged record
  cannot leak one.
* **The broker's view** of the vehicles changes only together with
  ``broker_auth_state.version``: provisioning, revoking and a new broker password increment
  it in the same transaction, so the broker-side sync that polls the number never misses a
  change and never sees a number without its change.
* **Holding periods** (tenures, docs/decisions/0009-vehicle-ownership-periods.md): each
  provisioning starts a period (``vehicle_tenures``, number 1, 2, ... per VIN) and each
  revocation ends it, in the same transaction that changes the vehicle. A revocation also
  revokes the period's grants, withdraws its pending invitations and cancels its open
  commands, so nothing of one holder reaches the next.

Concurrency: SQLite's write transactions are exclusive (``BEGIN IMMEDIATE``), so a read that
decides a write sees the latest data. On PostgreSQL (read committed) the rows a decision
rests on are locked first (``SELECT ... FOR UPDATE``): the vehicle when provisioning,
revoking or granting, the refresh token when rotating; unique constraints settle the races
that have no row to lock yet (two sign-ups with one e-mail, two provisionings of a new VIN).

Errors::

    GatewayError
     +-- NotFound                    an id the operation needs does not exist
     |    +-- VehicleRevoked         the vehicle exists but is revoked
     +-- Conflict                    the operation would duplicate something unique
     |    +-- DuplicateEmail
     |    +-- VehicleAlreadyProvisioned
     |    +-- DuplicateApiKeyPrefix
     +-- InvitationClosed            the invitation can no longer be accepted or declined

Lookups (``get_*``) and changes to one thing by its id (``revoke_*``, ``update_user``) return
``None`` for an unknown id instead of raising, so the API can answer 404 without a
try/except; operations that need other rows to exist (creating a user in an account, a grant
of a vehicle) raise :class:`NotFound`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Final, Literal, ParamSpec, TypeVar, cast

from sqlalchemy import (
    CursorResult,
    Result,
    Select,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from gateway.core.policy import READ_SERVICE
from gateway.core.vehicle_lifecycle import LifecycleEvent, decide
from gateway.errors import GatewayError
from gateway.statedb.commands import cancel_open_commands
from gateway.statedb.database import StateDatabase
from gateway.statedb.lifecycle_log import (
    LifecycleRefused,
    allowed,
    event_values,
    lock_lifecycle,
    record_event,
    state_of,
)
from gateway.statedb.models import (
    AccountRow,
    ApiKeyRow,
    BrokerAuthStateRow,
    LoginThrottleRow,
    RefreshTokenRow,
    UserRow,
    VehicleGrantRow,
    VehicleInvitationRow,
    VehicleLifecycleEventRow,
    VehicleLifecycleRow,
    VehicleRow,
    VehicleTenureRow,
    VehicleTransferRow,
    WebSessionRow,
)
from gateway.statedb.prepared import Prepared

__all__ = [
    "READ_SERVICE",
    "AccountRecord",
    "AccountRepository",
    "ApiKeyRecord",
    "Conflict",
    "DuplicateApiKeyPrefix",
    "DuplicateEmail",
    "GrantRecord",
    "InvitationClosed",
    "InvitationRecord",
    "LifecycleRefused",
    "LoginThrottle",
    "NotFound",
    "RefreshOutcome",
    "RefreshTokenRecord",
    "SessionsEnded",
    "TenureRecord",
    "UserLimitReached",
    "UserRecord",
    "VehicleAlreadyProvisioned",
    "VehicleRecord",
    "VehicleRevoked",
    "authentication_changes",
    "end_tenure",
    "normalize_email",
    "start_tenure",
]

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# how many changes this process has committed that can end or change a caller's
# authentication: a user's role, account, token version or disabling, an API key or a
# dashboard session revoked or deleted. A cache of what authentication reads
# (gateway.api.authcache) drops what it read before the last one (decision 0035).
_auth_changes = 0
_auth_changes_lock = threading.Lock()


def authentication_changes() -> int:
    """The number of authentication changes this process has committed so far."""
    return _auth_changes


def _changes_authentication(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Counts a change of authentication once ``method`` has returned or raised, that is
    after its transaction has ended: a read that began before the commit is then older
    than the count it was taken under, never newer."""

    @functools.wraps(method)
    def counted(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        global _auth_changes
        try:
            return method(*args, **kwargs)
        finally:
            with _auth_changes_lock:
                _auth_changes += 1

    return counted


_Row = TypeVar("_Row")
_Rec = TypeVar("_Rec")

#: what :meth:`AccountRepository.rotate_refresh_token` answers
RefreshOutcome = Literal["ok", "reused", "expired", "revoked", "unknown"]

#: the one row of ``broker_auth_state`` (inserted by migration 0002)
_BROKER_STATE_ID: Final = 1

#: why a holding period ended, and why its open commands were cancelled
_REVOKED: Final = "revoked"


def normalize_email(email: str) -> str:
    """The stored form of an e-mail address: stripped and lower-cased.

    Lower-casing the local part is not strictly RFC 5321, but no mail provider in use treats
    ``Alice@`` and ``alice@`` as two people, and treating them as one is what makes the
    UNIQUE constraint case-insensitive on both backends without a functional index.
    """
    return email.strip().lower()


# --- records --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """A tenant: ``kind`` is ``organization`` or ``private``."""

    id: int
    kind: str
    name: str
    created_at: int

    @classmethod
    def from_row(cls, row: AccountRow) -> AccountRecord:
        return cls(id=row.id, kind=row.kind, name=row.name, created_at=row.created_at)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as stored; ``account_id`` is None only for installation admins.

    ``password_hash`` is left out of ``repr`` (a record in a log line must not carry it).
    """

    id: int
    email: str
    name: str
    role: str
    account_id: int | None
    created_at: int
    disabled_at: int | None
    #: in every access token; a token with an older version is refused
    token_version: int
    password_hash: str = field(repr=False)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    @classmethod
    def from_row(cls, row: UserRow) -> UserRecord:
        return cls(
            id=row.id,
            email=row.email,
            name=row.name,
            role=row.role,
            account_id=row.account_id,
            created_at=row.created_at,
            disabled_at=row.disabled_at,
            token_version=row.token_version,
            password_hash=row.password_hash,
        )


@dataclass(frozen=True, slots=True)
class VehicleRecord:
    """A provisioned vehicle (its broker user name is the VIN); ``mqtt_password_hash`` is
    left out of ``repr``. ``tenure`` is the number of its current holding period (the last
    one, once revoked); ``provisioned_at`` is when that period started."""

    vin: str
    account_id: int
    label: str | None
    mqtt_password_hash: str | None = field(repr=False)
    provisioned_at: int
    provisioned_by: int | None
    revoked_at: int | None
    tenure: int

    @property
    def active(self) -> bool:
        """Not revoked: the vehicle may connect to the broker and be read and commanded."""
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: VehicleRow) -> VehicleRecord:
        return cls(
            vin=row.vin,
            account_id=row.account_id,
            label=row.label,
            mqtt_password_hash=row.mqtt_password_hash,
            provisioned_at=row.provisioned_at,
            provisioned_by=row.provisioned_by,
            revoked_at=row.revoked_at,
            tenure=row.tenure,
        )


@dataclass(frozen=True, slots=True)
class TenureRecord:
    """One holding period of a VIN (``number`` 1, 2, ... per VIN); ``ended_at`` is None
    while it lasts."""

    id: int
    vin: str
    number: int
    account_id: int
    started_at: int
    started_by: int | None
    ended_at: int | None
    ended_by: int | None
    end_reason: str | None

    @classmethod
    def from_row(cls, row: VehicleTenureRow) -> TenureRecord:
        return cls(
            id=row.id,
            vin=row.vin,
            number=row.number,
            account_id=row.account_id,
            started_at=row.started_at,
            started_by=row.started_by,
            ended_at=row.ended_at,
            ended_by=row.ended_by,
            end_reason=row.end_reason,
        )


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """A grant of one vehicle to one user for the services listed: ``read`` and remote
    services (command types); ``tenure`` is the holding period it was given in."""

    id: int
    vin: str
    user_id: int
    services: tuple[str, ...]
    granted_by: int | None
    created_at: int
    revoked_at: int | None
    tenure: int

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: VehicleGrantRow) -> GrantRecord:
        return cls(
            id=row.id,
            vin=row.vin,
            user_id=row.user_id,
            services=tuple(row.services),
            granted_by=row.granted_by,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            tenure=row.tenure,
        )


@dataclass(frozen=True, slots=True)
class InvitationRecord:
    """An offer to share ``vin`` with whoever logs in as ``email``; ``status`` is pending,
    accepted, declined or withdrawn (an invitation past ``expires_at`` stays ``pending``
    in the table but can no longer be accepted: see :meth:`open_at`)."""

    id: int
    vin: str
    tenure: int
    email: str
    services: tuple[str, ...]
    invited_by: int | None
    created_at: int
    expires_at: int
    status: str
    decided_at: int | None
    grant_id: int | None
    #: the user who had ``email`` at the invitation (only they may answer it); None:
    #: nobody had it, and accepting needs the token whose hash is ``accept_token_hash``
    to_user_id: int | None = None
    accept_token_hash: str | None = None

    def open_at(self, now: int) -> bool:
        """Pending and not expired at ``now``."""
        return self.status == "pending" and now < self.expires_at

    @classmethod
    def from_row(cls, row: VehicleInvitationRow) -> InvitationRecord:
        return cls(
            id=row.id,
            vin=row.vin,
            tenure=row.tenure,
            email=row.email,
            services=tuple(row.services),
            invited_by=row.invited_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            status=row.status,
            decided_at=row.decided_at,
            grant_id=row.grant_id,
            to_user_id=row.to_user_id,
            accept_token_hash=row.accept_token_hash,
        )


@dataclass(frozen=True, slots=True)
class LoginThrottle:
    """Wrong passwords in a row for one user from one client address."""

    failures: int
    locked_until: int | None


@dataclass(frozen=True, slots=True)
class SessionsEnded:
    """What :meth:`AccountRepository.end_user_sessions` ended: live refresh-token sessions
    and active API keys (every access token ends too: the user's token version moved)."""

    refresh_sessions: int
    api_keys: int
    web_sessions: int = 0


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key's row: its public ``prefix`` and the SHA-256 of the whole key (left out of
    ``repr``)."""

    id: int
    user_id: int
    name: str
    prefix: str
    key_hash: str = field(repr=False)
    created_at: int
    last_used_at: int | None
    revoked_at: int | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> ApiKeyRecord:
        return cls(
            id=row.id,
            user_id=row.user_id,
            name=row.name,
            prefix=row.prefix,
            key_hash=row.key_hash,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """One refresh token of a ``family`` (one login session); ``token_hash`` is its SHA-256,
    left out of ``repr``."""

    id: int
    user_id: int
    family: str
    token_hash: str = field(repr=False)
    created_at: int
    expires_at: int
    revoked_at: int | None
    replaced_at: int | None

    @classmethod
    def from_row(cls, row: RefreshTokenRow) -> RefreshTokenRecord:
        return cls(
            id=row.id,
            user_id=row.user_id,
            family=row.family,
            token_hash=row.token_hash,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            replaced_at=row.replaced_at,
        )


# --- errors ---------------------------------------------------------------------------------


class NotFound(GatewayError):
    """Something the operation needs does not exist; ``what`` names it (``account``,
    ``user``, ``vehicle``), ``key`` is the id that was looked for."""

    def __init__(self, what: str, key: object, message: str | None = None) -> None:
        self.what = what
        self.key = key
        super().__init__(message or f"no {what} with id {key!r}")


class VehicleRevoked(NotFound):
    """The vehicle exists but is revoked: it cannot be granted or given new broker
    credentials until it is provisioned again. A :class:`NotFound` because for everything
    but provisioning a revoked vehicle is gone."""

    def __init__(self, vin: str) -> None:
        super().__init__(
            "vehicle",
            vin,
            f"vehicle {vin} is revoked; provision it again before granting it or setting its "
            "broker password",
        )


class Conflict(GatewayError):
    """The operation would create a second copy of something that must be unique."""


class DuplicateEmail(Conflict):
    """A user with this e-mail address (compared case-insensitively) exists."""

    def __init__(self, email: str) -> None:
        self.email = email
        super().__init__(
            f"a user with e-mail {email!r} already exists (addresses are compared "
            "case-insensitively)"
        )


class UserLimitReached(Conflict):
    """The account already has ``limit`` users (disabled ones count: users are never
    deleted), the most it may have."""

    def __init__(self, account_id: int, limit: int) -> None:
        self.account_id = account_id
        self.limit = limit
        super().__init__(f"account {account_id} already has {limit} users, the most it may have")


class VehicleAlreadyProvisioned(Conflict):
    """The VIN belongs to an active vehicle; revoke it first to provision it anew."""

    def __init__(self, vin: str, account_id: int | None) -> None:
        self.vin = vin
        self.account_id = account_id
        owner = "" if account_id is None else f" (account {account_id})"
        super().__init__(
            f"vehicle {vin} is already provisioned{owner}; revoke it before provisioning it again"
        )


class DuplicateApiKeyPrefix(Conflict):
    """Another API key has this prefix (prefixes are random: generate a new key)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        super().__init__(f"an API key with prefix {prefix!r} already exists; generate a new key")


class InvitationClosed(GatewayError):
    """The invitation was already accepted, declined or withdrawn, has expired, or its
    vehicle has changed hands (``why`` says which)."""

    def __init__(self, invitation_id: int, why: str) -> None:
        self.invitation_id = invitation_id
        self.why = why
        super().__init__(f"invitation {invitation_id} can no longer be answered: {why}")


# --- the repository -------------------------------------------------------------------------


#: :meth:`AccountRepository.vehicle_access`'s statement: the vehicle's columns in the order
#: of :class:`VehicleRecord`'s fields, then the grant's in :class:`GrantRecord`'s order; at
#: most one grant of a (vehicle, user) is active (``create_grant`` sees to that)
_VEHICLE_ACCESS: Final = Prepared(
    select(
        VehicleRow.vin,
        VehicleRow.account_id,
        VehicleRow.label,
        VehicleRow.mqtt_password_hash,
        VehicleRow.provisioned_at,
        VehicleRow.provisioned_by,
        VehicleRow.revoked_at,
        VehicleRow.tenure,
        VehicleGrantRow.id,
        VehicleGrantRow.vin,
        VehicleGrantRow.user_id,
        VehicleGrantRow.services,
        VehicleGrantRow.granted_by,
        VehicleGrantRow.created_at,
        VehicleGrantRow.revoked_at,
        VehicleGrantRow.tenure,
    )
    .outerjoin(
        VehicleGrantRow,
        and_(
            VehicleGrantRow.vin == VehicleRow.vin,
            VehicleGrantRow.tenure == VehicleRow.tenure,
            VehicleGrantRow.user_id == bindparam("user_id"),
            VehicleGrantRow.revoked_at.is_(None),
        ),
    )
    .where(VehicleRow.vin == bindparam("vin"))
)


class AccountRepository:
    """Accounts, users, vehicles, grants, API keys and refresh tokens (thread-safe)."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    # --- accounts ---------------------------------------------------------------------------

    def create_account(self, kind: str, name: str, *, now: int) -> AccountRecord:
        with self._db.write() as session:
            row = AccountRow(kind=str(kind), name=name, created_at=now)
            session.add(row)
            session.flush()
            return AccountRecord.from_row(row)

    def _get(self, model: type[_Row], key: object, record: Callable[[_Row], _Rec]) -> _Rec | None:
        """The row of ``model`` with primary key ``key`` as a record, or None."""
        with self._db.read() as session:
            row = session.get(model, key)
            return None if row is None else record(row)

    def get_account(self, account_id: int) -> AccountRecord | None:
        return self._get(AccountRow, account_id, AccountRecord.from_row)

    def list_accounts(
        self, *, after_id: int | None = None, limit: int | None = None
    ) -> list[AccountRecord]:
        """Every account, oldest first (a page: ids after ``after_id``, at most ``limit``)."""
        query = _paged(select(AccountRow), AccountRow.id, after_id, limit)
        with self._db.read() as session:
            return [AccountRecord.from_row(row) for row in session.scalars(query)]

    # --- users ------------------------------------------------------------------------------

    def create_user(
        self,
        *,
        email: str,
        name: str,
        password_hash: str,
        role: str,
        account_id: int | None,
        now: int,
        limit: int | None = None,
    ) -> UserRecord:
        """Store a new user; ``email`` is kept stripped and lower-cased.

        Raises :class:`DuplicateEmail` when the address is taken in any case (also when a
        concurrent sign-up wins the race: the UNIQUE constraint decides), :class:`NotFound`
        for an unknown ``account_id``, :class:`UserLimitReached` when the account already
        has ``limit`` users (None: no limit) and ``ValueError`` for an empty address.
        """
        email = normalize_email(email)
        if not email:
            raise ValueError("a user needs an e-mail address")
        try:
            with self._db.write() as session:
                if session.scalar(select(UserRow.id).where(UserRow.email == email)) is not None:
                    raise DuplicateEmail(email)
                if account_id is not None:
                    _require(session, AccountRow, account_id, "account")
                    if limit is not None:
                        _require_room_for_a_user(session, account_id, limit)
                row = UserRow(
                    email=email,
                    name=name,
                    password_hash=password_hash,
                    role=str(role),
                    account_id=account_id,
                    created_at=now,
                    disabled_at=None,
                    token_version=0,
                )
                session.add(row)
                session.flush()
                return UserRecord.from_row(row)
        except IntegrityError:
            # PostgreSQL: a concurrent create_user with this address committed between our
            # check and our insert (SQLite's exclusive write transaction cannot interleave)
            if self.get_user_by_email(email) is None:
                raise
            raise DuplicateEmail(email) from None

    def get_user(self, user_id: int) -> UserRecord | None:
        return self._get(UserRow, user_id, UserRecord.from_row)

    def get_user_by_email(self, email: str) -> UserRecord | None:
        """The user with this address, in any case and with surrounding blanks ignored."""
        with self._db.read() as session:
            row = session.scalar(select(UserRow).where(UserRow.email == normalize_email(email)))
            return None if row is None else UserRecord.from_row(row)

    def list_users(
        self,
        *,
        account_id: int | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[UserRecord]:
        """The users of ``account_id`` (every user when None), oldest first (a page: ids
        after ``after_id``, at most ``limit``)."""
        query = _paged(select(UserRow), UserRow.id, after_id, limit)
        if account_id is not None:
            query = query.where(UserRow.account_id == account_id)
        with self._db.read() as session:
            return [UserRecord.from_row(row) for row in session.scalars(query)]

    @_changes_authentication
    def update_user(
        self,
        user_id: int,
        *,
        role: str | None = None,
        name: str | None = None,
        password_hash: str | None = None,
        disabled_at: int | EllipsisType | None = ...,
    ) -> UserRecord | None:
        """Change the fields given (None/omitted: unchanged; ``disabled_at=None``
        re-enables). None for an unknown user.

        ``disabled_at`` needs the ``...`` default because None is a value to set there.
        """
        with self._db.write() as session:
            row = session.scalar(select(UserRow).where(UserRow.id == user_id).with_for_update())
            if row is None:
                return None
            if role is not None:
                row.role = str(role)
            if name is not None:
                row.name = name
            if password_hash is not None:
                row.password_hash = password_hash
            if not isinstance(disabled_at, EllipsisType):
                row.disabled_at = disabled_at
            session.flush()
            return UserRecord.from_row(row)

    def count_users(self, *, role: str | None = None) -> int:
        """How many users (with ``role``, when given) exist, disabled ones included; e.g. to
        know whether the first admin still has to be created."""
        query = select(func.count()).select_from(UserRow)
        if role is not None:
            query = query.where(UserRow.role == str(role))
        with self._db.read() as session:
            return session.scalar(query) or 0

    @_changes_authentication
    def end_user_sessions(self, user_id: int, *, now: int) -> SessionsEnded:
        """End everything the user is logged in with, in one transaction: raise their token
        version (every access token issued so far is refused from the next request on),
        revoke every refresh token, every API key and every web dashboard session. For a
        password change or reset and for disabling; re-enabling brings none of it back.
        Unknown user: nothing ends."""
        with self._db.write() as session:
            bumped = session.execute(
                update(UserRow)
                .where(UserRow.id == user_id)
                .values(token_version=UserRow.token_version + 1)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(bumped) == 0:
                return SessionsEnded(0, 0)
            sessions = _revoke_refresh_tokens_of(session, user_id, now)
            keys = session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.user_id == user_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
            web = session.execute(
                update(WebSessionRow)
                .where(WebSessionRow.user_id == user_id, WebSessionRow.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
            return SessionsEnded(sessions, _rowcount(keys), _rowcount(web))

    # --- login throttling -------------------------------------------------------------------

    def login_throttle(self, user_id: int, remote_addr: str) -> LoginThrottle | None:
        """Wrong passwords in a row for the user from this address (None: none)."""
        with self._db.read() as session:
            row = session.get(LoginThrottleRow, (user_id, remote_addr))
            return None if row is None else LoginThrottle(row.failures, row.locked_until)

    def record_login_failure(
        self,
        user_id: int,
        remote_addr: str,
        *,
        now: int,
        lockout_ms: Callable[[int], int | None],
    ) -> LoginThrottle:
        """Count a wrong password for the user from ``remote_addr`` and lock that pair for
        ``lockout_ms(failures)`` ms (None: no lock). The increment is done by the database
        (an upsert), so concurrent failures are all counted. Raises :class:`NotFound` for
        an unknown user."""
        insert = postgresql.insert if self._db.backend == "postgresql" else sqlite.insert
        with self._db.write() as session:
            _require(session, UserRow, user_id, "user")
            statement = insert(LoginThrottleRow).values(
                user_id=user_id,
                remote_addr=remote_addr,
                failures=1,
                locked_until=None,
                updated_at=now,
            )
            failures = session.execute(
                statement.on_conflict_do_update(
                    index_elements=[LoginThrottleRow.user_id, LoginThrottleRow.remote_addr],
                    set_={"failures": LoginThrottleRow.failures + 1, "updated_at": now},
                ).returning(LoginThrottleRow.failures)
            ).scalar_one()
            lock = lockout_ms(failures)
            locked_until = None if lock is None else now + lock
            session.execute(
                update(LoginThrottleRow)
                .where(
                    LoginThrottleRow.user_id == user_id,
                    LoginThrottleRow.remote_addr == remote_addr,
                )
                .values(locked_until=locked_until)
                .execution_options(synchronize_session=False)
            )
            return LoginThrottle(failures, locked_until)

    def clear_login_throttles(self, user_id: int) -> None:
        """Forget the user's wrong passwords from every address (a new password)."""
        with self._db.write() as session:
            session.execute(delete(LoginThrottleRow).where(LoginThrottleRow.user_id == user_id))

    def record_login_success(self, user_id: int, remote_addr: str) -> None:
        """Forget the wrong passwords of the user from this address (a no-op when there
        are none)."""
        with self._db.write() as session:
            session.execute(
                delete(LoginThrottleRow).where(
                    LoginThrottleRow.user_id == user_id,
                    LoginThrottleRow.remote_addr == remote_addr,
                )
            )

    # --- vehicles ---------------------------------------------------------------------------

    def provision_vehicle(
        self,
        *,
        vin: str,
        account_id: int,
        label: str | None,
        mqtt_password_hash: str | None,
        provisioned_by: int | None,
        now: int,
        by_operator: bool = True,
    ) -> VehicleRecord:
        """Register ``vin`` in ``account_id`` with its broker password hash (None: client
        certificate only), starting a new holding period; bumps the broker version.

        A new VIN starts period 1. A revoked vehicle is provisioned again in place (new
        account, label, hash and times, ``revoked_at`` cleared) with the next period number:
        its row and the previous periods' records stay, but nothing of them is the new
        holder's (every read is by period). Its old grants were revoked with it and stay
        revoked (any still active are revoked here as well). Raises
        :class:`VehicleAlreadyProvisioned` for an active vehicle, whichever account holds it
        (also when a concurrent provisioning of a new VIN wins: the primary key decides),
        and :class:`NotFound` for an unknown account or ``provisioned_by`` user.

        The vehicle lifecycle (docs/decisions/0021-vehicle-lifecycle.md) decides as well:
        a decommissioned VIN is refused to everyone, a VIN the maker registered (``built``)
        to anyone but an operator (``by_operator``: administrators and the operator's
        tools; the API passes it per caller), with :class:`LifecycleRefused`. The change is
        recorded in the VIN's lifecycle history.
        """
        return self.provision_vehicles(
            [vin],
            account_id=account_id,
            label=label,
            mqtt_password_hash=mqtt_password_hash,
            provisioned_by=provisioned_by,
            now=now,
            by_operator=by_operator,
        )[0]

    def provision_vehicles(
        self,
        vins: Sequence[str],
        *,
        account_id: int,
        label: str | None,
        mqtt_password_hash: str | None,
        provisioned_by: int | None,
        now: int,
        by_operator: bool = True,
    ) -> list[VehicleRecord]:
        """:meth:`provision_vehicle` for each of ``vins`` (the same account, label, hash and
        times), all in one transaction: all of them or, on the first refusal, none. One
        commit means one change of the broker identities, which the broker's sync applies
        at once (a restart with re-rendered files for a large one, decision 0008); one by
        one, a sync running meanwhile restarted the broker again and again
        (docs/decisions/0028-fleet-scale-benchmark.md).

        In bulk (decision 0031): the VINs' lifecycle and vehicle rows are read and locked
        a few hundred at a time, every VIN is decided as :meth:`provision_vehicle` decides
        it, and the rows of the new VINs (vehicle, holding period, lifecycle event) are
        inserted with one statement per table; a revoked VIN provisioned again takes the
        one-by-one path (its grants are revoked too)."""
        try:
            with self._db.write() as session:
                _require(session, AccountRow, account_id, "account")
                if provisioned_by is not None:
                    _require(session, UserRow, provisioned_by, "user")
                return _provision_many(
                    session,
                    list(vins),
                    _Tenure(account_id, label, mqtt_password_hash, provisioned_by, now),
                    by_operator=by_operator,
                )
        except IntegrityError:
            # a concurrent provisioning of a new VIN won: the primary key decided
            existing = next((v for v in map(self.get_vehicle, vins) if v is not None), None)
            if existing is None:
                raise
            raise VehicleAlreadyProvisioned(existing.vin, existing.account_id) from None

    def revoke_vehicle(self, vin: str, *, now: int, by: int | None = None) -> VehicleRecord | None:
        """Revoke the vehicle, ending its holding period: every active grant of it is
        revoked, every pending invitation withdrawn and every open command (queued, sent,
        accepted) cancelled with the reason ``vehicle_revoked``, all in one transaction with
        the broker-version bump, so nothing of this holder can reach the VIN's next one.
        A running service ends with it; the change is recorded in the lifecycle history.

        ``by``: the user who revoked it (None: an operator or the system). None for an
        unknown VIN; an already revoked vehicle is returned unchanged (its first
        ``revoked_at`` stays, the version does not move).
        """
        with self._db.write() as session:
            life = lock_lifecycle(session, vin)
            row = _locked_vehicle(session, vin)
            if row is None:
                return None
            if row.revoked_at is None:
                transition = allowed(
                    vin,
                    decide(
                        state_of(life, row),
                        LifecycleEvent.RELEASE,
                        registered=life is not None and life.registered_at is not None,
                    ),
                )
                end_tenure(session, row, now=now, by=by, reason=_REVOKED)
                if life is not None:
                    life.service_account_id = life.service_until = None
                record_event(
                    session,
                    vin,
                    transition,
                    at=now,
                    actor_user_id=by,
                    account_id=row.account_id,
                    tenure=row.tenure,
                )
                session.flush()
            return VehicleRecord.from_row(row)

    def tenures(self, vin: str) -> list[TenureRecord]:
        """Every holding period of ``vin``, first first (empty for an unknown VIN)."""
        with self._db.read() as session:
            rows = session.scalars(
                select(VehicleTenureRow)
                .where(VehicleTenureRow.vin == vin)
                .order_by(VehicleTenureRow.number)
            )
            return [TenureRecord.from_row(row) for row in rows]

    def set_mqtt_password(self, vin: str, password_hash: str | None) -> VehicleRecord | None:
        """Replace the vehicle's broker password hash (credential rotation; None: client
        certificate only) and bump the broker version.

        None for an unknown VIN; :class:`VehicleRevoked` for a revoked one (a revoked
        vehicle has no broker identity to rotate). The table keeps no rotation time (the
        audit log does).
        """
        with self._db.write() as session:
            row = _locked_vehicle(session, vin)
            if row is None:
                return None
            if row.revoked_at is not None:
                raise VehicleRevoked(vin)
            row.mqtt_password_hash = password_hash
            _bump_broker_version(session)
            session.flush()
            return VehicleRecord.from_row(row)

    def get_vehicle(self, vin: str) -> VehicleRecord | None:
        """The vehicle, active or revoked (see :attr:`VehicleRecord.active`)."""
        return self._get(VehicleRow, vin, VehicleRecord.from_row)

    def list_vehicles(
        self, *, account_id: int | None = None, include_revoked: bool = False
    ) -> list[VehicleRecord]:
        """The vehicles of ``account_id`` (of every account when None), ordered by VIN."""
        query = select(VehicleRow).order_by(VehicleRow.vin)
        if account_id is not None:
            query = query.where(VehicleRow.account_id == account_id)
        if not include_revoked:
            query = query.where(VehicleRow.revoked_at.is_(None))
        with self._db.read() as session:
            return [VehicleRecord.from_row(row) for row in session.scalars(query)]

    def broker_version(self) -> int:
        """The number that changes with every change of the broker identities."""
        with self._db.read() as session:
            version = session.scalar(
                select(BrokerAuthStateRow.version).where(BrokerAuthStateRow.id == _BROKER_STATE_ID)
            )
        if version is None:
            raise RuntimeError(_MISSING_BROKER_STATE)
        return version

    def broker_identities(self) -> list[tuple[str, str | None]]:
        """``(vin, mqtt_password_hash)`` of every active vehicle, ordered by VIN: what the
        broker's password file and ACL are rendered from."""
        query = (
            select(VehicleRow.vin, VehicleRow.mqtt_password_hash)
            .where(VehicleRow.revoked_at.is_(None))
            .order_by(VehicleRow.vin)
        )
        with self._db.read() as session:
            return [(vin, password_hash) for vin, password_hash in session.execute(query)]

    def active_vins(self) -> frozenset[str]:
        """The VINs of the active vehicles (the ingest drops what revoked ones still send)."""
        return frozenset(self.active_tenures())

    def active_tenures(self) -> dict[str, tuple[int, int]]:
        """vin -> (current holding period, when it started) of every active vehicle: what
        the gateway files the data it stores for the VIN under."""
        with self._db.read() as session:
            rows = session.execute(
                select(VehicleRow.vin, VehicleRow.tenure, VehicleRow.provisioned_at).where(
                    VehicleRow.revoked_at.is_(None)
                )
            )
            return {vin: (tenure, started_at) for vin, tenure, started_at in rows}

    def tenure_bounds(self) -> dict[str, tuple[int, int, int | None, int | None]]:
        """vin -> (current or last holding period, when it started, when it ended (None:
        active), when the period before it ended (None: none before, or open)) of every
        registered vehicle: the bounds the gateway files a sample by (``Tenure``)."""
        previous = aliased(VehicleTenureRow)
        query = select(
            VehicleRow.vin,
            VehicleRow.tenure,
            VehicleRow.provisioned_at,
            VehicleRow.revoked_at,
            previous.ended_at,
        ).outerjoin(
            previous,
            and_(previous.vin == VehicleRow.vin, previous.number == VehicleRow.tenure - 1),
        )
        with self._db.read() as session:
            return {
                vin: (number, started_at, ended_at, previous_ended_at)
                for vin, number, started_at, ended_at, previous_ended_at in session.execute(query)
            }

    def registered_vins(self, *, after: str | None, limit: int) -> list[str]:
        """VINs of every registered vehicle (revoked ones too), ordered, those after
        ``after``: one page of what an administrator sees."""
        query = select(VehicleRow.vin).order_by(VehicleRow.vin).limit(limit)
        if after is not None:
            query = query.where(VehicleRow.vin > after)
        with self._db.read() as session:
            return list(session.scalars(query))

    # --- access -----------------------------------------------------------------------------

    def visible_vins(
        self, *, account_id: int | None, user_id: int, include_account: bool
    ) -> dict[str, int]:
        """The active vehicles whose data a user may read, each with its current holding
        period (vin -> tenure): those of ``account_id`` when ``include_account`` (the
        policy decides that from the role), plus those granted to ``user_id`` by an active
        grant of the current period that includes the ``read`` service. Read in one
        transaction."""
        granted = (
            select(VehicleRow.vin, VehicleRow.tenure, VehicleGrantRow.services)
            .join(
                VehicleGrantRow,
                and_(
                    VehicleGrantRow.vin == VehicleRow.vin,
                    VehicleGrantRow.tenure == VehicleRow.tenure,
                ),
            )
            .where(
                VehicleGrantRow.user_id == user_id,
                VehicleGrantRow.revoked_at.is_(None),
                VehicleRow.revoked_at.is_(None),
            )
        )
        with self._db.read() as session:
            vins = {
                vin: tenure
                for vin, tenure, services in session.execute(granted)
                if READ_SERVICE in services
            }
            if include_account and account_id is not None:
                own = session.execute(
                    select(VehicleRow.vin, VehicleRow.tenure).where(
                        VehicleRow.account_id == account_id, VehicleRow.revoked_at.is_(None)
                    )
                )
                vins.update((vin, tenure) for vin, tenure in own)
        return vins

    def vehicle_access(
        self, vin: str, user_id: int
    ) -> tuple[VehicleRecord | None, GrantRecord | None]:
        """The vehicle (active or not; None if unknown) and ``user_id``'s active grant of it
        in its current holding period (None if none), read in one transaction so the two
        agree: the policy decides from both, and a revocation between two reads could
        otherwise pair a revoked vehicle's state with a grant that no longer exists, or the
        reverse."""
        # one statement, built once, of columns rather than mapped rows, on a connection
        # rather than a session: it runs on the event loop for every command and vehicle
        # request, where building the statement, two ORM instances and a session cost
        # more than the query (decisions 0035, 0036)
        with self._db.read_connection() as connection:
            found = _VEHICLE_ACCESS.first(connection, {"vin": vin, "user_id": user_id})
        if found is None:
            return None, None
        vehicle = VehicleRecord(*found[:8])
        grant_id, grant_vin, grantee, services, granted_by, created_at, revoked, tenure = found[8:]
        if grant_id is None:
            return vehicle, None
        grant = GrantRecord(
            grant_id, grant_vin, grantee, tuple(services), granted_by, created_at, revoked, tenure
        )
        return vehicle, grant

    def vehicles_access(
        self, vins: Sequence[str], user_id: int
    ) -> dict[str, tuple[VehicleRecord, GrantRecord | None]]:
        """:meth:`vehicle_access` for many VINs at once (a bulk command), in chunks of 1,000
        in one read transaction; unknown VINs are absent."""
        found: dict[str, tuple[VehicleRecord, GrantRecord | None]] = {}
        with self._db.read() as session:
            for start in range(0, len(vins), 1000):
                query = (
                    select(VehicleRow, VehicleGrantRow)
                    .outerjoin(
                        VehicleGrantRow,
                        and_(
                            VehicleGrantRow.vin == VehicleRow.vin,
                            VehicleGrantRow.tenure == VehicleRow.tenure,
                            VehicleGrantRow.user_id == user_id,
                            VehicleGrantRow.revoked_at.is_(None),
                        ),
                    )
                    .where(VehicleRow.vin.in_(vins[start : start + 1000]))
                )
                for vehicle, grant in session.execute(query):
                    found[vehicle.vin] = (
                        VehicleRecord.from_row(vehicle),
                        None if grant is None else GrantRecord.from_row(grant),
                    )
        return found

    # --- grants -----------------------------------------------------------------------------

    def create_grant(
        self,
        *,
        vin: str,
        user_id: int,
        services: Sequence[str],
        granted_by: int | None,
        now: int,
    ) -> GrantRecord:
        """Grant ``vin`` to ``user_id`` for ``services`` (``read`` and command types;
        duplicates dropped, order kept; at least one), in the vehicle's current holding
        period.

        An active grant of the same vehicle to the same user is replaced: revoked at ``now``
        in the same transaction, so a user never holds two. The vehicle row is locked first,
        so two concurrent grants cannot both find "no active grant" (PostgreSQL). Raises
        :class:`NotFound` for an unknown vehicle, user or ``granted_by``,
        :class:`VehicleRevoked` for a revoked vehicle, ``ValueError`` for no services and
        ``TypeError`` for a bare string as ``services`` (which would otherwise become one
        service per letter).
        """
        services = _services(services)
        with self._db.write() as session:
            vehicle = _locked_vehicle(session, vin)
            if vehicle is None:
                raise NotFound("vehicle", vin)
            if vehicle.revoked_at is not None:
                raise VehicleRevoked(vin)
            _require(session, UserRow, user_id, "user")
            if granted_by is not None:
                _require(session, UserRow, granted_by, "user")
            return _grant(session, vehicle, user_id, services, granted_by, now)

    def revoke_grant(self, grant_id: int, *, now: int) -> GrantRecord | None:
        """Revoke the grant (None if unknown; an already revoked one comes back unchanged)."""
        with self._db.write() as session:
            row = session.scalar(
                select(VehicleGrantRow).where(VehicleGrantRow.id == grant_id).with_for_update()
            )
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = now
                session.flush()
            return GrantRecord.from_row(row)

    def get_grant(self, grant_id: int) -> GrantRecord | None:
        return self._get(VehicleGrantRow, grant_id, GrantRecord.from_row)

    def list_grants(
        self,
        *,
        vin: str | None = None,
        user_id: int | None = None,
        tenure: int | None = None,
        include_revoked: bool = False,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[GrantRecord]:
        """Grants of ``vin`` and/or to ``user_id`` (every grant when both are None), of the
        holding period ``tenure`` when given, oldest first (a page: ids after ``after_id``,
        at most ``limit``)."""
        query = _paged(select(VehicleGrantRow), VehicleGrantRow.id, after_id, limit)
        if vin is not None:
            query = query.where(VehicleGrantRow.vin == vin)
        if user_id is not None:
            query = query.where(VehicleGrantRow.user_id == user_id)
        if tenure is not None:
            query = query.where(VehicleGrantRow.tenure == tenure)
        if not include_revoked:
            query = query.where(VehicleGrantRow.revoked_at.is_(None))
        with self._db.read() as session:
            return [GrantRecord.from_row(row) for row in session.scalars(query)]

    # --- invitations ------------------------------------------------------------------------

    def create_invitation(
        self,
        *,
        vin: str,
        email: str,
        services: Sequence[str],
        invited_by: int | None,
        now: int,
        expires_at: int,
        accept_token_hash: str | None = None,
    ) -> InvitationRecord:
        """Offer ``vin`` (in its current holding period) to the user who has ``email``
        now (bound to them), or, when nobody has it, to whoever logs in as ``email`` and
        presents the token whose hash is ``accept_token_hash`` (decision 0023), for
        ``services``. The inviter is told nothing about ``email``. Raises
        :class:`NotFound` for an unknown vehicle and :class:`VehicleRevoked` for a revoked
        one."""
        services = _services(services)
        email = normalize_email(email)
        with self._db.write() as session:
            vehicle = _locked_vehicle(session, vin)
            if vehicle is None:
                raise NotFound("vehicle", vin)
            if vehicle.revoked_at is not None:
                raise VehicleRevoked(vin)
            row = VehicleInvitationRow(
                vin=vin,
                tenure=vehicle.tenure,
                email=email,
                to_user_id=session.scalar(select(UserRow.id).where(UserRow.email == email)),
                accept_token_hash=accept_token_hash,
                services=list(services),
                invited_by=invited_by,
                created_at=now,
                expires_at=expires_at,
                status="pending",
                decided_at=None,
                grant_id=None,
            )
            session.add(row)
            session.flush()
            return InvitationRecord.from_row(row)

    def get_invitation(self, invitation_id: int) -> InvitationRecord | None:
        return self._get(VehicleInvitationRow, invitation_id, InvitationRecord.from_row)

    def list_invitations(
        self,
        *,
        vin: str | None = None,
        tenure: int | None = None,
        email: str | None = None,
        status: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> list[InvitationRecord]:
        """Invitations of ``vin`` (in period ``tenure``) and/or to ``email``, with
        ``status`` when given; oldest first (a page: ids after ``after_id``, at most
        ``limit``)."""
        query = _paged(select(VehicleInvitationRow), VehicleInvitationRow.id, after_id, limit)
        if vin is not None:
            query = query.where(VehicleInvitationRow.vin == vin)
        if tenure is not None:
            query = query.where(VehicleInvitationRow.tenure == tenure)
        if email is not None:
            query = query.where(VehicleInvitationRow.email == normalize_email(email))
        if status is not None:
            query = query.where(VehicleInvitationRow.status == status)
        with self._db.read() as session:
            return [InvitationRecord.from_row(row) for row in session.scalars(query)]

    def answer_invitation(
        self, invitation_id: int, *, user_id: int, accept: bool, now: int
    ) -> tuple[InvitationRecord, GrantRecord | None]:
        """Accept (a grant to ``user_id`` is made, replacing theirs of the vehicle) or
        decline the invitation, in one transaction with the vehicle locked. The caller
        checks that the invitation is addressed to the user. Raises :class:`NotFound` for an
        unknown invitation and :class:`InvitationClosed` when it is no longer pending, has
        expired, or its vehicle was revoked or changed hands since."""
        with self._db.write() as session:
            invitation = session.scalar(
                select(VehicleInvitationRow)
                .where(VehicleInvitationRow.id == invitation_id)
                .with_for_update()
            )
            if invitation is None:
                raise NotFound("invitation", invitation_id)
            vehicle = _locked_vehicle(session, invitation.vin)
            assert vehicle is not None  # a foreign key
            if invitation.status != "pending":
                raise InvitationClosed(invitation_id, f"it was {invitation.status}")
            if now >= invitation.expires_at:
                raise InvitationClosed(invitation_id, "it has expired")
            if vehicle.revoked_at is not None or vehicle.tenure != invitation.tenure:
                raise InvitationClosed(invitation_id, "the vehicle is no longer shared from there")
            grant = None
            if accept:
                grant = _grant(
                    session,
                    vehicle,
                    user_id,
                    _services(invitation.services),
                    invitation.invited_by,
                    now,
                )
                invitation.grant_id = grant.id
            invitation.status = "accepted" if accept else "declined"
            invitation.decided_at = now
            session.flush()
            return InvitationRecord.from_row(invitation), grant

    def withdraw_invitation(self, invitation_id: int, *, now: int) -> InvitationRecord | None:
        """Withdraw a pending invitation (None if unknown; one already answered comes back
        unchanged)."""
        with self._db.write() as session:
            row = session.scalar(
                select(VehicleInvitationRow)
                .where(VehicleInvitationRow.id == invitation_id)
                .with_for_update()
            )
            if row is None:
                return None
            if row.status == "pending":
                row.status = "withdrawn"
                row.decided_at = now
                session.flush()
            return InvitationRecord.from_row(row)

    # --- API keys ---------------------------------------------------------------------------

    def create_api_key(
        self, *, user_id: int, name: str, prefix: str, key_hash: str, now: int
    ) -> ApiKeyRecord:
        """Store a new key's prefix and hash. Raises :class:`NotFound` for an unknown user
        and :class:`DuplicateApiKeyPrefix` if the prefix is taken."""
        try:
            with self._db.write() as session:
                _require(session, UserRow, user_id, "user")
                row = ApiKeyRow(
                    user_id=user_id,
                    name=name,
                    prefix=prefix,
                    key_hash=key_hash,
                    created_at=now,
                    last_used_at=None,
                    revoked_at=None,
                )
                session.add(row)
                session.flush()
                return ApiKeyRecord.from_row(row)
        except IntegrityError:
            if self.get_api_key_by_prefix(prefix) is None:
                raise
            raise DuplicateApiKeyPrefix(prefix) from None

    def get_api_key_by_prefix(self, prefix: str) -> ApiKeyRecord | None:
        """The key with this prefix, revoked or not (the caller checks ``active`` and
        compares the hash)."""
        with self._db.read() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == prefix))
            return None if row is None else ApiKeyRecord.from_row(row)

    def api_key_and_user(self, prefix: str) -> tuple[ApiKeyRecord, UserRecord] | None:
        """The key with this prefix and its user, in one query: what authenticating a
        request with an API key needs (the caller compares the hash and checks both are
        active)."""
        with self._db.read() as session:
            found = session.execute(
                select(ApiKeyRow, UserRow)
                .join(UserRow, UserRow.id == ApiKeyRow.user_id)
                .where(ApiKeyRow.prefix == prefix)
            ).first()
            if found is None:
                return None
            key, user = found
            return ApiKeyRecord.from_row(key), UserRecord.from_row(user)

    def get_api_key(self, key_id: int) -> ApiKeyRecord | None:
        return self._get(ApiKeyRow, key_id, ApiKeyRecord.from_row)

    def list_api_keys(
        self, user_id: int, *, after_id: int | None = None, limit: int | None = None
    ) -> list[ApiKeyRecord]:
        """The user's keys, revoked ones included (so a UI can show them), oldest first (a
        page: ids after ``after_id``, at most ``limit``)."""
        query = _paged(select(ApiKeyRow), ApiKeyRow.id, after_id, limit)
        with self._db.read() as session:
            rows = session.scalars(query.where(ApiKeyRow.user_id == user_id))
            return [ApiKeyRecord.from_row(row) for row in rows]

    @_changes_authentication
    def revoke_api_key(self, key_id: int, *, now: int) -> ApiKeyRecord | None:
        """Revoke the key (None if unknown; an already revoked one comes back unchanged)."""
        with self._db.write() as session:
            row = session.scalar(select(ApiKeyRow).where(ApiKeyRow.id == key_id).with_for_update())
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = now
                session.flush()
            return ApiKeyRecord.from_row(row)

    def touch_api_key(self, key_id: int, *, now: int) -> None:
        """Set ``last_used_at`` to ``now``: one UPDATE, nothing read back. It never moves
        back in time (requests finishing out of order), and an unknown id is ignored."""
        with self._db.write() as session:
            session.execute(
                update(ApiKeyRow)
                .where(
                    ApiKeyRow.id == key_id,
                    or_(ApiKeyRow.last_used_at.is_(None), ApiKeyRow.last_used_at < now),
                )
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )

    # --- web dashboard sessions --------------------------------------------------------------

    @_changes_authentication
    def create_web_session(
        self, user_id: int, token_hash: str, *, now: int, expires_at: int, keep: int
    ) -> int:
        """Store a dashboard login (the SHA-256 of its token) and answer its id. The user's
        ended sessions (expired or revoked) are deleted in the same transaction, and of the
        live ones only the newest ``keep`` - 1 stay, so logging in again and again cannot
        grow the table: the oldest logins end first."""
        with self._db.write() as session:
            session.execute(
                delete(WebSessionRow).where(
                    WebSessionRow.user_id == user_id,
                    or_(WebSessionRow.expires_at <= now, WebSessionRow.revoked_at.is_not(None)),
                )
            )
            live = session.scalars(
                select(WebSessionRow.id)
                .where(WebSessionRow.user_id == user_id)
                .order_by(WebSessionRow.id.desc())
                .offset(max(keep - 1, 0))
            ).all()
            if live:
                session.execute(delete(WebSessionRow).where(WebSessionRow.id.in_(live)))
            row = WebSessionRow(
                user_id=user_id,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
            )
            session.add(row)
            session.flush()
            return row.id

    def web_session(self, token_hash: str) -> tuple[UserRecord, int] | None:
        """The user of a dashboard session that has not been revoked, and when it expires
        (the caller compares it with its clock), in one query; None for an unknown or
        revoked one (the caller checks the user is enabled)."""
        with self._db.read() as session:
            found = session.execute(
                select(UserRow, WebSessionRow.expires_at)
                .join(WebSessionRow, WebSessionRow.user_id == UserRow.id)
                .where(WebSessionRow.token_hash == token_hash, WebSessionRow.revoked_at.is_(None))
            ).first()
            if found is None:
                return None
            user, expires_at = found
            return UserRecord.from_row(user), int(expires_at)

    @_changes_authentication
    def revoke_web_session(self, token_hash: str, *, now: int) -> bool:
        """End a dashboard session (logging out): False if it was unknown or already ended."""
        with self._db.write() as session:
            ended = session.execute(
                update(WebSessionRow)
                .where(WebSessionRow.token_hash == token_hash, WebSessionRow.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
            return _rowcount(ended) > 0

    # --- refresh tokens ---------------------------------------------------------------------

    def create_refresh_token(
        self, *, user_id: int, family: str, token_hash: str, expires_at: int, now: int
    ) -> RefreshTokenRecord:
        """Store the first token of a new session (``family``: a fresh UUID per login).
        Raises :class:`NotFound` for an unknown user."""
        with self._db.write() as session:
            _require(session, UserRow, user_id, "user")
            row = RefreshTokenRow(
                user_id=user_id,
                family=family,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                replaced_at=None,
            )
            session.add(row)
            session.flush()
            return RefreshTokenRecord.from_row(row)

    def rotate_refresh_token(
        self, token_hash: str, *, new_token_hash: str, new_expires_at: int, now: int
    ) -> tuple[RefreshOutcome, RefreshTokenRecord | None]:
        """Exchange a refresh token for a new one of the same family, in one write
        transaction with the family locked (see :func:`_lock_token`), so of two concurrent
        uses of one token exactly one succeeds.

        Returns, checked in this order:

        * ``("unknown", None)``: no such token.
        * ``("revoked", None)``: the token (hence its family) was revoked (logout, theft).
        * ``("reused", None)``: the token was already exchanged. Either the client or a
          thief used it before; which one cannot be told, so every token of the family is
          revoked (RFC 9700, refresh token rotation). Checked before expiry: a thief who
          waits must not escape detection.
        * ``("expired", None)``: ``now >= expires_at``.
        * ``("ok", new)``: the token is marked replaced and ``new`` inserted.
        """
        with self._db.write() as session:
            row = _lock_token(session, token_hash)
            if row is None:
                return "unknown", None
            if row.revoked_at is not None:
                return "revoked", None
            if row.replaced_at is not None:
                revoked = _revoke_family(session, row.family, now)
                logger.warning(
                    "refresh token of user %s reused: session %s revoked (%d tokens)",
                    row.user_id,
                    row.family,
                    revoked,
                )
                return "reused", None
            if now >= row.expires_at:
                return "expired", None
            row.replaced_at = now
            new = RefreshTokenRow(
                user_id=row.user_id,
                family=row.family,
                token_hash=new_token_hash,
                created_at=now,
                expires_at=new_expires_at,
                revoked_at=None,
                replaced_at=None,
            )
            session.add(new)
            session.flush()
            return "ok", RefreshTokenRecord.from_row(new)

    def revoke_refresh_token(self, token_hash: str, *, now: int) -> RefreshTokenRecord | None:
        """Log out: revoke the token's whole family (the session, on every device that
        shares it). Returns the token as it is now; None if unknown."""
        with self._db.write() as session:
            row = _lock_token(session, token_hash)
            if row is None:
                return None
            _revoke_family(session, row.family, now)
            session.refresh(row)
            return RefreshTokenRecord.from_row(row)

    def revoke_user_refresh_tokens(self, user_id: int, *, now: int) -> int:
        """Revoke every token of the user (password change, disabling, "log out
        everywhere"). Returns how many sessions were still live (a token neither revoked,
        replaced nor expired: one per session), not how many rows changed.

        The user's tokens are locked in id order before the UPDATE (PostgreSQL): a rotation
        in progress finishes first, and the UPDATE, a new statement, then also sees the
        token that rotation inserted; a single UPDATE would miss it (its snapshot predates
        the insert) and leave that session alive. Id order takes each family's first row
        before its others, the order :func:`_lock_token` uses, so the two cannot deadlock.
        """
        with self._db.write() as session:
            return _revoke_refresh_tokens_of(session, user_id, now)


# --- helpers (inside a transaction) ---------------------------------------------------------

_MISSING_BROKER_STATE: Final = (
    "the broker_auth_state row (id 1) is missing; migration 0002 creates it: was it deleted "
    "by hand?"
)


def _require(session: Session, model: type[Any], key: object, what: str) -> None:
    """Raise :class:`NotFound` unless ``model`` has a row with primary key ``key``.

    A clear error instead of the foreign-key violation the insert would hit (worded
    differently by each backend). Nothing of this schema is ever deleted, so the check
    cannot go stale before the insert.
    """
    if session.get(model, key) is None:
        raise NotFound(what, key)


def _revoke_refresh_tokens_of(session: Session, user_id: int, now: int) -> int:
    """See :meth:`AccountRepository.revoke_user_refresh_tokens` (in the caller's
    transaction)."""
    session.execute(
        select(RefreshTokenRow.id)
        .where(RefreshTokenRow.user_id == user_id)
        .order_by(RefreshTokenRow.id)
        .with_for_update()
    )
    revoked = session.execute(
        update(RefreshTokenRow)
        .where(RefreshTokenRow.user_id == user_id, RefreshTokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(RefreshTokenRow.replaced_at, RefreshTokenRow.expires_at)
        .execution_options(synchronize_session=False)
    ).all()
    return sum(replaced_at is None and expires_at > now for replaced_at, expires_at in revoked)


def start_tenure(
    session: Session,
    row: VehicleRow | None,
    *,
    vin: str,
    account_id: int,
    label: str | None,
    mqtt_password_hash: str | None,
    by: int | None,
    now: int,
) -> VehicleRow:
    """Start the next holding period of ``vin`` in ``account_id`` (``row``: its locked,
    not held vehicle row, None for a new VIN) and bump the broker version, in the caller's
    transaction; the caller decided that it may. The next period's number is the row's
    ``tenure`` + 1 (1 for a new VIN). Grants still active are revoked."""
    if row is None:
        row = VehicleRow(
            vin=vin,
            account_id=account_id,
            label=label,
            mqtt_password_hash=mqtt_password_hash,
            provisioned_at=now,
            provisioned_by=by,
            revoked_at=None,
            tenure=1,
        )
        session.add(row)
    else:
        _revoke_grants_of(session, vin, now)
        row.account_id = account_id
        row.label = label
        row.mqtt_password_hash = mqtt_password_hash
        row.provisioned_at = now
        row.provisioned_by = by
        row.revoked_at = None
        row.tenure += 1
    session.flush()
    session.add(
        VehicleTenureRow(
            vin=vin,
            number=row.tenure,
            account_id=account_id,
            started_at=now,
            started_by=by,
            ended_at=None,
            ended_by=None,
            end_reason=None,
        )
    )
    session.flush()
    _bump_broker_version(session)
    return row


@dataclass(frozen=True, slots=True)
class _Tenure:
    """What every holding period a bulk provisioning starts has in common."""

    account_id: int
    label: str | None
    mqtt_password_hash: str | None
    by: int | None
    now: int


_LOCK_CHUNK = 500
"""VINs per locking SELECT of a bulk provisioning (SQLite allows 32,766 parameters, older
builds 999)."""


def _locked_rows(session: Session, model: type[_Row], vins: Sequence[str]) -> dict[str, _Row]:
    """The rows of ``model`` (keyed by ``vin``) for ``vins``, locked for the transaction, in
    VIN order (so two bulk provisionings on PostgreSQL lock in the same order)."""
    column = model.vin  # type: ignore[attr-defined]
    found: dict[str, _Row] = {}
    ordered = sorted(set(vins))
    for i in range(0, len(ordered), _LOCK_CHUNK):
        chunk = ordered[i : i + _LOCK_CHUNK]
        rows = session.scalars(
            select(model).where(column.in_(chunk)).order_by(column).with_for_update()
        )
        found.update((row.vin, row) for row in rows)  # type: ignore[attr-defined]
    return found


def _provision_many(
    session: Session, vins: list[str], t: _Tenure, *, by_operator: bool
) -> list[VehicleRecord]:
    """Provision ``vins`` in the caller's transaction (see
    :meth:`AccountRepository.provision_vehicles`); raises before writing anything when one
    of them is refused. Lock order as everywhere: lifecycle rows, then vehicle rows."""
    lives = _locked_rows(session, VehicleLifecycleRow, vins)
    rows = _locked_rows(session, VehicleRow, vins)
    transitions = {}
    for vin in vins:
        row = rows.get(vin)
        if vin in transitions or (row is not None and row.revoked_at is None):
            raise VehicleAlreadyProvisioned(vin, t.account_id if row is None else row.account_id)
        state = state_of(lives.get(vin), row)
        transitions[vin] = allowed(
            vin, decide(state, LifecycleEvent.PROVISION, by_operator=by_operator)
        )
    fresh = [vin for vin in vins if vin not in rows]
    records = {vin: _fresh_record(vin, t) for vin in fresh}
    if fresh:
        session.execute(insert(VehicleRow), [_vehicle_values(records[vin]) for vin in fresh])
        session.execute(insert(VehicleTenureRow), [_first_tenure(vin, t) for vin in fresh])
        _bump_broker_version(session, by=len(fresh))
    for vin in vins:
        if vin in rows:  # provisioned again after a revocation: the one-by-one path
            again = start_tenure(
                session,
                rows[vin],
                vin=vin,
                account_id=t.account_id,
                label=t.label,
                mqtt_password_hash=t.mqtt_password_hash,
                by=t.by,
                now=t.now,
            )
            records[vin] = VehicleRecord.from_row(again)
    session.execute(
        insert(VehicleLifecycleEventRow),
        [
            event_values(
                vin,
                transitions[vin],
                at=t.now,
                actor_user_id=t.by,
                account_id=t.account_id,
                tenure=records[vin].tenure,
            )
            for vin in vins
        ],
    )
    return [records[vin] for vin in vins]


def _fresh_record(vin: str, t: _Tenure) -> VehicleRecord:
    return VehicleRecord(
        vin=vin,
        account_id=t.account_id,
        label=t.label,
        mqtt_password_hash=t.mqtt_password_hash,
        provisioned_at=t.now,
        provisioned_by=t.by,
        revoked_at=None,
        tenure=1,
    )


def _vehicle_values(r: VehicleRecord) -> dict[str, Any]:
    return {
        "vin": r.vin,
        "account_id": r.account_id,
        "label": r.label,
        "mqtt_password_hash": r.mqtt_password_hash,
        "provisioned_at": r.provisioned_at,
        "provisioned_by": r.provisioned_by,
        "revoked_at": None,
        "tenure": 1,
    }


def _first_tenure(vin: str, t: _Tenure) -> dict[str, Any]:
    return {
        "vin": vin,
        "number": 1,
        "account_id": t.account_id,
        "started_at": t.now,
        "started_by": t.by,
        "ended_at": None,
        "ended_by": None,
        "end_reason": None,
    }


def end_tenure(session: Session, row: VehicleRow, *, now: int, by: int | None, reason: str) -> None:
    """End the current holding period of the (locked, held) vehicle ``row`` with
    ``reason`` (``revoked``, ``transferred``, ``decommissioned``), in the caller's
    transaction: its grants are revoked, its pending invitations withdrawn, its open
    commands cancelled, the vehicle is off the broker (``revoked_at``) and the broker
    version moves."""
    row.revoked_at = now
    _revoke_grants_of(session, row.vin, now)
    session.execute(
        update(VehicleInvitationRow)
        .where(VehicleInvitationRow.vin == row.vin, VehicleInvitationRow.status == "pending")
        .values(status="withdrawn", decided_at=now)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(VehicleTenureRow)
        .where(VehicleTenureRow.vin == row.vin, VehicleTenureRow.number == row.tenure)
        .values(ended_at=now, ended_by=by, end_reason=reason)
        .execution_options(synchronize_session=False)
    )
    session.execute(
        update(VehicleTransferRow)
        .where(VehicleTransferRow.vin == row.vin, VehicleTransferRow.status == "pending")
        .values(status="withdrawn", decided_at=now)
        .execution_options(synchronize_session=False)
    )
    cancelled = cancel_open_commands(
        session,
        row.vin,
        at=now,
        detail=f"the vehicle was {reason}; the command will never be delivered",
    )
    if cancelled:
        logger.info("vehicle %s %s: %d open commands cancelled", row.vin, reason, cancelled)
    _bump_broker_version(session)


def _locked_vehicle(session: Session, vin: str) -> VehicleRow | None:
    return session.scalar(select(VehicleRow).where(VehicleRow.vin == vin).with_for_update())


def _grant(
    session: Session,
    vehicle: VehicleRow,
    user_id: int,
    services: tuple[str, ...],
    granted_by: int | None,
    now: int,
) -> GrantRecord:
    """A new active grant of the (locked) ``vehicle`` in its current period, replacing the
    user's active one."""
    session.execute(
        update(VehicleGrantRow)
        .where(
            VehicleGrantRow.vin == vehicle.vin,
            VehicleGrantRow.user_id == user_id,
            VehicleGrantRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    row = VehicleGrantRow(
        vin=vehicle.vin,
        tenure=vehicle.tenure,
        user_id=user_id,
        services=list(services),
        granted_by=granted_by,
        created_at=now,
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return GrantRecord.from_row(row)


def _revoke_grants_of(session: Session, vin: str, now: int) -> None:
    session.execute(
        update(VehicleGrantRow)
        .where(VehicleGrantRow.vin == vin, VehicleGrantRow.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def _lock_token(session: Session, token_hash: str) -> RefreshTokenRow | None:
    """The token's row, read after locking its family (PostgreSQL; SQLite's write
    transaction is exclusive anyway).

    The family's first row (lowest id) is the family's lock: every operation on a family
    (rotate, reuse, logout) takes it before anything else, so they run one after the other.
    Locking only the token's own row would not do: revoking a family on reuse while another
    token of it is being rotated would wait for that row, and its UPDATE (whose snapshot
    predates the rotation's insert) would miss the new token, leaving the session alive;
    two reuses in one family at once could deadlock. The token is read again after the
    lock (``populate_existing``) because a transaction we waited for may have changed it.
    """
    family = session.scalar(
        select(RefreshTokenRow.family).where(RefreshTokenRow.token_hash == token_hash)
    )
    if family is None:
        return None
    session.execute(
        select(RefreshTokenRow.id)
        .where(RefreshTokenRow.family == family)
        .order_by(RefreshTokenRow.id)
        .limit(1)
        .with_for_update()
    )
    return session.scalar(
        select(RefreshTokenRow)
        .where(RefreshTokenRow.token_hash == token_hash)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def _revoke_family(session: Session, family: str, now: int) -> int:
    """Revoke every not yet revoked token of ``family``; how many were."""
    result = session.execute(
        update(RefreshTokenRow)
        .where(RefreshTokenRow.family == family, RefreshTokenRow.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result)


def _bump_broker_version(session: Session, *, by: int = 1) -> None:
    """Increment ``broker_auth_state.version`` (by one per change) in the caller's
    transaction (on PostgreSQL the row stays locked until commit, so concurrent changes
    get distinct versions)."""
    result = session.execute(
        update(BrokerAuthStateRow)
        .where(BrokerAuthStateRow.id == _BROKER_STATE_ID)
        .values(version=BrokerAuthStateRow.version + by)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        raise RuntimeError(_MISSING_BROKER_STATE)


def _rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE (``Session.execute`` is typed as returning any result;
    for a DML statement it is a :class:`CursorResult`)."""
    return cast(CursorResult[Any], result).rowcount


def _services(services: Sequence[str]) -> tuple[str, ...]:
    if isinstance(services, str):
        raise TypeError(
            f"services must be a sequence of command types, not the string {services!r}"
        )
    unique: dict[str, None] = {}
    for service in services:
        if not isinstance(service, str) or not service:
            raise ValueError(
                f"a service is 'read' or a non-empty command type name, got {service!r}"
            )
        unique[str(service)] = None
    if not unique:
        raise ValueError("a grant needs at least one service ('read' to see the vehicle)")
    return tuple(unique)


_Selected = TypeVar("_Selected", bound=Select[Any])


def _paged(query: _Selected, id_column: Any, after_id: int | None, limit: int | None) -> _Selected:
    """``query`` in id order, from after ``after_id``, at most ``limit`` rows: one page of a
    list (the API pages every list by id)."""
    query = query.order_by(id_column)
    if after_id is not None:
        query = query.where(id_column > after_id)
    if limit is not None:
        query = query.limit(limit)
    return query


def _count_users(session: Session, account_id: int) -> int:
    query = select(func.count()).select_from(UserRow).where(UserRow.account_id == account_id)
    return int(session.scalar(query) or 0)


def _require_room_for_a_user(session: Session, account_id: int, limit: int) -> None:
    """Raise :class:`UserLimitReached` when ``account_id`` has ``limit`` users. The account's
    row is locked first (PostgreSQL; SQLite: the write lock), so two creations at once
    cannot both see room for one more (security review 5, "left": only a rate limit bounded
    how many users an owner or a fleet manager created)."""
    session.execute(select(AccountRow.id).where(AccountRow.id == account_id).with_for_update())
    if _count_users(session, account_id) >= limit:
        raise UserLimitReached(account_id, limit)
