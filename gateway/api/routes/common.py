"""What several account-and-access routes share: the HTTP answers of the policy's
user and vehicle rules (404 for what you may not see, 403 for what you see but may not
touch), the common errors, and small response helpers."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from fastapi import Response

from gateway.api.errors import ApiError, documented, invalid_request
from gateway.api.models.accounts import (
    AccountOut,
    ApiKeyOut,
    AuditOut,
    GrantOut,
    InvitationOut,
    UserOut,
)
from gateway.api.paging import page_of
from gateway.api.security import AuthContext, forbidden, vehicle_not_found
from gateway.auth.passwords import WeakPassword, check_password
from gateway.core.policy import Principal, can_manage_user, can_see_user
from gateway.statedb.accounts import UserRecord, VehicleRecord
from schemas.commands import CommandType

__all__ = [
    "ACCOUNT_ERRORS",
    "account_not_found",
    "email_taken",
    "id_page",
    "managed_user_or_self",
    "managed_vehicle",
    "no_store",
    "password_ok",
    "stored_services",
    "target_account",
    "user_not_found",
    "visible_user",
]

#: the errors every account-and-access route may answer (documented per router)
ACCOUNT_ERRORS: dict[int | str, dict[str, Any]] = documented(401, 403, 404, 409, 422, 429)


def password_ok(password: str, loc: list[str | int]) -> None:
    try:
        check_password(password)
    except WeakPassword as exc:
        raise invalid_request(loc, str(exc), "weak_password") from None


def user_not_found(user_id: int | str) -> ApiError:
    return ApiError(
        404, "user_not_found", f"No user {user_id} is visible to you. GET /v1/users lists them."
    )


def account_not_found(account_id: int) -> ApiError:
    return ApiError(
        404,
        "account_not_found",
        f"No account {account_id} is visible to you. GET /v1/accounts lists them.",
    )


def email_taken(email: str) -> ApiError:
    return ApiError(
        409,
        "email_taken",
        f"There is already a user with the e-mail address {email}; log in, or use another.",
    )


def managed_vehicle(context: AuthContext, principal: Principal, vin: str) -> VehicleRecord:
    """The active vehicle if the caller manages it: 404 if they cannot see it, 403 if they
    see it but do not manage it."""
    access, vehicle = context.lookup(principal, vin)
    if not access.read or vehicle is None or not vehicle.active:
        raise vehicle_not_found(vin)
    if not access.manage:
        raise forbidden(
            f"You can see vehicle {vin} but not manage it: only its owner, its "
            "organization's fleet managers and administrators can."
        )
    return vehicle


def visible_user(context: AuthContext, principal: Principal, user_id: int) -> UserRecord:
    """The user if the caller may see them (:func:`gateway.core.policy.can_see_user`),
    else 404 as for an unknown user."""
    user = context.accounts.get_user(user_id)
    if user is None or not can_see_user(principal, user):
        raise user_not_found(user_id)
    return user


def managed_user_or_self(
    context: AuthContext, principal: Principal, user_id: int
) -> UserRecord | None:
    """The user if it is the caller or one they manage
    (:func:`gateway.core.policy.can_manage_user`), else None (answered like an unknown
    user)."""
    user = context.accounts.get_user(user_id)
    if user is None or not can_manage_user(principal, user):
        return None
    return user


def target_account(principal: Principal, account_id: int | None, what: str) -> int:
    """The account a new user or vehicle goes to: the one named, else the caller's."""
    if account_id is None:
        if principal.account_id is None:
            raise invalid_request(
                ["body", "account_id"], f"say which account {what} belongs to", "missing"
            )
        return principal.account_id
    return account_id


def no_store(response: Response) -> None:
    """Headers for a response that carries a secret (a token, a key, a password): no cache
    may keep it (RFC 6749 5.1; ``Pragma`` for HTTP/1.0 caches)."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"


_HasId = TypeVar("_HasId", AccountOut, UserOut, GrantOut, ApiKeyOut, AuditOut, InvitationOut)


def id_page(items: list[_HasId], limit: int, kind: str) -> tuple[list[_HasId], str | None]:
    """One page of a list keyed by id (``items``: up to ``limit + 1``, in list order)."""
    return page_of(items, limit=limit, kind=kind, key=lambda item: [item.id])


def stored_services(requested: list[Literal["read"] | CommandType]) -> list[str]:
    """The services of a grant or invitation, as stored: sorted, each once."""
    return sorted({str(s) for s in requested})
