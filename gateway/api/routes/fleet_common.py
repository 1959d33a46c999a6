"""What the fleet routes share: the HTTP answers of the fleet policy (404 for an account's
setup you may not see, 403 for one you see but may not change), the scope of an alert or
trip list (an account, a fleet, a vehicle, or what a driver was granted), and errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol, TypeVar

from fastapi import Query

from gateway.api.bounds import MAX_ID
from gateway.api.deps import vin_or_422
from gateway.api.errors import ApiError, documented
from gateway.api.models import ErrorDetail
from gateway.api.routes.common import account_not_found
from gateway.api.security import AuthContext, forbidden, readable_data
from gateway.api.settings import QUOTA_OPTION
from gateway.core.policy import Principal, can_manage_account, can_read_fleet_setup
from gateway.statedb.fleets import FleetRecord, FleetRepository, QuotaExceeded

__all__ = [
    "FLEET_ERRORS",
    "IdQuery",
    "Scope",
    "check_account",
    "list_account",
    "owned",
    "quota_exceeded",
    "scope_of",
]

#: the errors every fleet route may answer (documented per router)
FLEET_ERRORS: dict[int | str, dict[str, Any]] = documented(401, 403, 404, 409, 422, 429, 503)

IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]


class _AccountOwned(Protocol):
    @property
    def account_id(self) -> int: ...


T = TypeVar("T", bound=_AccountOwned)


def owned(
    principal: Principal, record: T | None, what: str, key: object, *, manage: bool = False
) -> T:
    """``record`` if the caller may read (``manage``: change) its account's fleet setup:
    404 ``<what>_not_found`` if they may not see it (or it does not exist), 403 if they see
    it but may not change it."""
    if record is None or not can_read_fleet_setup(principal, record.account_id):
        raise ApiError(404, f"{what}_not_found", f"No {what} {key} is visible to you.")
    if manage and not can_manage_account(principal, record.account_id):
        raise forbidden(
            f"You can see {what} {key} but not change it: its account's fleet managers, "
            "its owner and administrators can."
        )
    return record


def check_account(principal: Principal, account_id: int | None, *, manage: bool) -> int:
    """The account a new fleet resource goes to (the one named, else the caller's), if
    the caller may change (``manage``) or read its fleet setup; else 404 / 403."""
    if account_id is None:
        account_id = principal.account_id
        if account_id is None:
            raise ApiError(422, "invalid_request", "Say which account: give account_id.")
    if not can_read_fleet_setup(principal, account_id):
        raise account_not_found(account_id)
    if manage and not can_manage_account(principal, account_id):
        raise forbidden("Only the account's fleet managers, its owner and administrators can.")
    return account_id


def quota_exceeded(exc: QuotaExceeded) -> ApiError:
    """409 ``quota_exceeded``: the limit, and how to make room or have it raised."""
    name = exc.what.removesuffix("s")
    return ApiError(
        409,
        "quota_exceeded",
        f"{exc.owner.capitalize()} has {exc.limit} {exc.what}, the most allowed. Delete "
        f"{exc.what} no longer needed, or ask the operator to raise the quota "
        f"({QUOTA_OPTION}, e.g. {exc.quota}={exc.limit * 2}).",
        [
            ErrorDetail(
                loc=[],
                msg=f"at most {exc.limit} {exc.what} per {exc.owner.split()[0]}",
                type=f"{name}_quota",
            )
        ],
    )


#: the account of a list that covers nothing: the caller may read no account's fleet setup
NO_ACCOUNT: Final = -1


def list_account(principal: Principal, account_id: int | None) -> int | None:
    """The account a list of fleet setup covers: the one named (404 unless readable), else
    the caller's; None for an administrator without one (every account); NO_ACCOUNT for
    a caller who may read no account's setup."""
    if account_id is not None:
        return check_account(principal, account_id, manage=False)
    if principal.is_admin:
        return None
    if can_read_fleet_setup(principal, principal.account_id):
        return principal.account_id
    return NO_ACCOUNT


@dataclass(frozen=True, slots=True)
class Scope:
    """Which alerts or trips a list covers: an account (None: all), (vin, tenure) pairs
    (None: all of the account), a fleet."""

    account_id: int | None
    vehicles: list[tuple[str, int]] | None
    fleet_id: int | None


def scope_of(
    context: AuthContext,
    fleets: FleetRepository,
    principal: Principal,
    *,
    vin: str | None,
    fleet_id: int | None,
    account_id: int | None,
) -> Scope:
    """The scope of ``?vin=`` (the vehicle's current holding period, if the caller reads
    its data), ``?fleet_id=`` (a fleet they may read) or ``?account_id=``; without any, the
    caller's account, or for a driver the vehicles granted to them with ``read``."""
    if vin is not None:
        vin = vin_or_422(vin, ["query", "vin"])  # before the database sees it (a NUL: 500)
        tenure, _ = readable_data(context, principal, vin)
        return Scope(None, [(vin, tenure)], None)
    if fleet_id is not None:
        fleet: FleetRecord = owned(principal, fleets.get_fleet(fleet_id), "fleet", fleet_id)
        return Scope(fleet.account_id, None, fleet_id)
    if account_id is not None or principal.is_admin:
        return Scope(list_account(principal, account_id), None, None)
    if can_read_fleet_setup(principal, principal.account_id):
        return Scope(principal.account_id, None, None)
    visible = context.visible_vins(principal) or {}
    return Scope(None, sorted(visible.items()), None)
