"""The authorization policy: who may read and command which vehicle, manage which user,
read which audit log and send which fleet service; pure and total.

Part of the pure core (docs/decisions/0013-architecture-step.md): it imports nothing with
IO, the API (``gateway.api``) asks it and turns its answers into 404 and 403.

Roles (one per user):

========================  =====================================================
``admin``                 operates the installation: everything, every account
``fleet_manager``         an organization's vehicles: read, command, provision,
                          grant; its users (fleet roles and drivers); its audit log
``fleet_viewer``          an organization's vehicles: read only
``owner``                 a private account's vehicles: read, command, provision,
                          share with drivers (grants)
``driver``                only vehicles granted to them, and only the remote
                          services (command types) each grant lists
========================  =====================================================

A grant works for any user, not only for ``driver``: an owner can lend their car to a
family member who owns a car of their own. Access to a vehicle is the most a user gets
from their account and their grant. A grant lists its services: ``read`` (the vehicle's
state, history and command list) and remote services (command types); a grant without
``read`` lets its holder send those commands and follow the ones they sent, nothing more.
Within an account a manager grants directly; to anyone outside it, a grant is an invitation
the recipient accepts (``gateway.api.routes.grants``).

The API answers **404** for a vehicle (or command) the caller may not see at all, the same
answer as for one that does not exist, so ids cannot be probed; it answers **403** only
when the caller can see the resource but not do this to it (a viewer sending a command).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = [
    "ACCOUNT_ROLES",
    "READ_SERVICE",
    "AccountKind",
    "Principal",
    "Role",
    "VehicleAccess",
    "can_change_role_or_disable",
    "can_create_user",
    "can_manage_account",
    "can_manage_user",
    "can_read_audit",
    "can_read_fleet_setup",
    "can_see_user",
    "fleet_service_allowed",
    "vehicle_access",
]

#: the service of a grant that lets its holder read the vehicle's data (the others are
#: command types); ``gateway.statedb.accounts`` stores grants with the same name
READ_SERVICE: Final = "read"


class Role(enum.StrEnum):
    ADMIN = "admin"
    FLEET_MANAGER = "fleet_manager"
    FLEET_VIEWER = "fleet_viewer"
    OWNER = "owner"
    DRIVER = "driver"


class AccountKind(enum.StrEnum):
    ORGANIZATION = "organization"
    PRIVATE = "private"


#: which roles a user of each kind of account can have
ACCOUNT_ROLES: Final[dict[AccountKind, frozenset[Role]]] = {
    AccountKind.ORGANIZATION: frozenset({Role.FLEET_MANAGER, Role.FLEET_VIEWER, Role.DRIVER}),
    AccountKind.PRIVATE: frozenset({Role.OWNER, Role.DRIVER}),
}

#: roles that manage their account: its vehicles, grants and users
_MANAGERS: Final = frozenset({Role.FLEET_MANAGER, Role.OWNER})
#: roles that see every vehicle of their account
_ACCOUNT_READERS: Final = frozenset({Role.FLEET_MANAGER, Role.FLEET_VIEWER, Role.OWNER})


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    user_id: int
    email: str
    role: Role
    account_id: int | None
    #: "token" (a person logged in), "session" (the same, in the web dashboard) or
    #: "api_key" (an integration acting as the user)
    via: str = "token"
    api_key_prefix: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def actor(self) -> str:
        """Who, for the audit log: never a secret, always enough to find the user."""
        who = f"user:{self.user_id} {self.email}"
        if self.api_key_prefix is not None:
            who += f" via api_key:tgk_{self.api_key_prefix}"
        return who


class _Vehicle(Protocol):
    @property
    def account_id(self) -> int: ...
    @property
    def active(self) -> bool: ...


class _Grant(Protocol):
    @property
    def services(self) -> tuple[str, ...]: ...
    @property
    def active(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class VehicleAccess:
    """What one principal may do with one vehicle."""

    #: may see it at all: its registration, and the commands they sent (else: answer 404)
    read: bool = False
    #: may manage it: grants, revocation, credentials
    manage: bool = False
    #: command types it may send; None: every type
    services: frozenset[str] | None = frozenset()
    #: may read its data: state, history, the vehicle's commands (else: 403)
    read_data: bool = False

    def may_command(self, command_type: str) -> bool:
        return self.read and (self.services is None or command_type in self.services)

    @property
    def may_command_anything(self) -> bool:
        return self.read and (self.services is None or bool(self.services))


NO_ACCESS: Final = VehicleAccess()
_FULL: Final = VehicleAccess(read=True, manage=True, services=None, read_data=True)


def vehicle_access(
    principal: Principal, vehicle: _Vehicle | None, grant: _Grant | None
) -> VehicleAccess:
    """``principal``'s access to ``vehicle`` (None: not provisioned), given their active
    ``grant`` on it (None: no grant).

    An admin may do everything, also with vehicles that report without being provisioned
    (they are in the telemetry store, not in the registry). Everybody else needs an
    active, provisioned vehicle.
    """
    if principal.is_admin:
        return _FULL
    if vehicle is None or not vehicle.active:
        return NO_ACCESS
    read = False
    read_data = False
    services: frozenset[str] | None = frozenset()
    if principal.account_id is not None and vehicle.account_id == principal.account_id:
        if principal.role in _MANAGERS:
            return _FULL
        if principal.role in _ACCOUNT_READERS:
            read = read_data = True
    if grant is not None and grant.active:
        read = True
        read_data = read_data or READ_SERVICE in grant.services
        services = frozenset(grant.services) - {READ_SERVICE}
    return VehicleAccess(read=read, manage=False, services=services, read_data=read_data)


def can_manage_account(principal: Principal, account_id: int | None) -> bool:
    """May provision vehicles into, and list and manage the users of, the account
    (administrators: any; owners and fleet managers: their own). Reading its audit log is
    :func:`can_read_audit`, a narrower rule."""
    if principal.is_admin:
        return True
    return (
        account_id is not None
        and principal.account_id == account_id
        and principal.role in _MANAGERS
    )


def can_create_user(
    principal: Principal, *, role: Role, account_id: int | None, account_kind: AccountKind | None
) -> bool:
    """May ``principal`` create a user with ``role`` in the account?

    Admins create anyone (an admin has no account; everyone else needs one whose kind
    allows the role). Fleet managers create fleet managers, viewers and drivers of their
    organization; owners create drivers of their private account (a family member's
    login, who then sees only what a grant gives them).
    """
    if role is Role.ADMIN:
        return principal.is_admin and account_id is None
    if account_id is None or account_kind is None or role not in ACCOUNT_ROLES[account_kind]:
        return False
    if principal.is_admin:
        return True
    if not can_manage_account(principal, account_id):
        return False
    if principal.role is Role.OWNER:
        return role is Role.DRIVER
    return True


class _User(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def account_id(self) -> int | None: ...


def can_see_user(principal: Principal, user: _User) -> bool:
    """May see the user (``GET /v1/users/{id}``, and the user a change is about): yourself,
    or a user of an account you manage."""
    return user.id == principal.user_id or can_manage_account(principal, user.account_id)


def can_manage_user(principal: Principal, user: _User) -> bool:
    """May act on the user's behalf things (list and revoke their API keys): yourself;
    administrators anyone; fleet managers their organization's users; owners only the
    drivers of their private account (not another owner of it)."""
    if user.id == principal.user_id or principal.is_admin:
        return True
    if not can_manage_account(principal, user.account_id):
        return False
    return principal.role is not Role.OWNER or user.role == Role.DRIVER


def can_change_role_or_disable(principal: Principal, user: _User) -> bool:
    """May change the user's role or disable them: administrators (also themselves; the
    route refuses changing your own role or disabling yourself with a reason of its own),
    and whoever manages the user's account, for anyone but themselves."""
    own = user.id == principal.user_id
    return principal.is_admin or (not own and can_manage_account(principal, user.account_id))


def can_read_audit(principal: Principal, account_id: int | None) -> bool:
    """May read the audit log of the account (None: the whole log).

    Administrators read everything; a fleet manager reads their organization's entries;
    nobody else reads the audit log, not even an owner of their private account
    (README's role table, decision 0007: "so a fleet manager can read their
    organization's"). Deliberately narrower than :func:`can_manage_account`.
    """
    if principal.is_admin:
        return True
    return (
        principal.role is Role.FLEET_MANAGER
        and principal.account_id is not None
        and account_id == principal.account_id
    )


def can_read_fleet_setup(principal: Principal, account_id: int | None) -> bool:
    """May read the account's fleet setup (fleets and groups, drivers, geofences, rule
    settings) and its fleet-wide alerts, trips and reports: administrators; fleet managers,
    fleet viewers and owners of their own account. Changing the setup is
    :func:`can_manage_account` (fleet managers and owners). A driver reads only the
    alerts and trips of the vehicles granted to them with ``read`` (by vehicle, like its
    state)."""
    if principal.is_admin:
        return True
    return (
        account_id is not None
        and principal.account_id == account_id
        and principal.role in _ACCOUNT_READERS
    )


def fleet_service_allowed(enterprise_only: bool, account_kind: AccountKind | None) -> bool:
    """May a command type be sent to a vehicle of an account of this kind? Fleet services
    (``enterprise_only``) are for vehicles of an organization only; None: the vehicle is
    not provisioned (only an administrator reaches it), which does not refuse."""
    return not enterprise_only or account_kind in (None, AccountKind.ORGANIZATION)
