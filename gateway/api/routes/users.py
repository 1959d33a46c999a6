"""Users (tag ``accounts``): create, list, read and change them. Who may create and
change whom is :mod:`gateway.core.policy`'s (``can_create_user``, ``can_see_user``,
``can_change_role_or_disable``); setting a password or disabling a user ends everything
they are logged in with (decision 0009)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Caller, CallerAudit
from gateway.api.errors import ApiError
from gateway.api.models.accounts import (
    IdPath,
    UserCreated,
    UserOut,
    UserPage,
    UserRequest,
    UserUpdate,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import (
    ACCOUNT_ERRORS,
    account_not_found,
    email_taken,
    id_page,
    no_store,
    password_ok,
    target_account,
    user_not_found,
    visible_user,
)
from gateway.api.security import AuthContext, forbidden, too_many
from gateway.auth.passwords import generate_password, hash_password, verify_password
from gateway.core.policy import (
    ACCOUNT_ROLES,
    AccountKind,
    Principal,
    Role,
    can_change_role_or_disable,
    can_create_user,
    can_manage_account,
    can_manage_user,
)
from gateway.statedb.accounts import DuplicateEmail, SessionsEnded, UserLimitReached, UserRecord

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.post(
    "/v1/users",
    response_model=UserCreated,
    status_code=201,
    tags=["accounts"],
    summary="Create a user",
)
def create_user(
    response: Response, principal: Caller, context: Auth, audit: CallerAudit, body: UserRequest
) -> UserCreated:
    """Administrators create anyone; fleet managers create fleet managers, viewers
    and drivers of their organization; owners create drivers of their private account
    (then share a vehicle with them: POST /v1/vehicles/{vin}/grants). Without a
    password one is generated and returned once."""
    account_id = (
        None if body.role is Role.ADMIN else target_account(principal, body.account_id, "the user")
    )
    account = context.accounts.get_account(account_id) if account_id is not None else None
    if account_id is not None and account is None:
        raise account_not_found(account_id)
    kind = AccountKind(account.kind) if account is not None else None
    if not can_create_user(principal, role=body.role, account_id=account_id, account_kind=kind):
        if account_id is not None and principal.account_id != account_id and not principal.is_admin:
            raise account_not_found(account_id)
        if kind is None:  # role admin: administrators belong to no account
            raise forbidden(
                f"You cannot create a user with role {body.role.value}: only administrators "
                "create administrators."
            )
        raise forbidden(
            f"You cannot create a user with role {body.role.value} here (roles of a "
            f"{kind.value} account: {', '.join(sorted(ACCOUNT_ROLES[kind]))}; owners create "
            "drivers, administrators create administrators)."
        )
    _limit_probes(context, audit, principal, account_id, taken=False)
    limit = context.settings.max_users_per_account
    generated = None
    if body.password is None:
        no_store(response)
        generated = generate_password()
    else:
        password_ok(body.password, ["body", "password"])
    try:
        user = context.accounts.create_user(
            email=body.email,
            name=body.name,
            password_hash=hash_password(body.password or generated or ""),
            role=body.role,
            account_id=account_id,
            now=context.now_ms(),
            limit=limit,
        )
    except UserLimitReached:
        audit.record(
            "user_create",
            outcome="denied",
            account_id=account_id,
            detail={"reason": "too many users", "limit": limit},
        )
        raise ApiError(
            409,
            "too_many_users",
            f"Account {account_id} already has {limit} users, the most one account may have "
            "(disabled users count: users are not deleted). Give an existing user the role "
            "or the vehicles instead (PATCH /v1/users/{id}), or ask the installation's "
            "operator to raise TELEMATICS_MAX_USERS_PER_ACCOUNT (--max-users-per-account).",
        ) from None
    except DuplicateEmail:
        _limit_probes(context, audit, principal, account_id, taken=True)
        raise email_taken(body.email) from None
    audit.record(
        "user_create",
        account_id=account_id,
        target=f"user:{user.id}",
        detail={"email": user.email, "role": user.role},
    )
    return UserCreated(**UserOut.model_validate(user).model_dump(), password=generated)


def _limit_probes(
    context: AuthContext,
    audit: CallerAudit,
    principal: Principal,
    account_id: int | None,
    *,
    taken: bool,
) -> None:
    """Bound how often a non-administrator learns that an address has a user (409
    `email_taken`): each such answer uses up one of the caller's invitation-limit tokens
    (own bucket); with none left every creation answers 429, taken address or not."""
    if principal.is_admin or context.invitations is None:
        return
    key = f"user_create:user:{principal.user_id}"
    if taken:
        context.invitations.acquire(key)
        return
    wait = context.invitations.peek(key)
    if wait > 0:
        audit.record(
            "user_create",
            outcome="denied",
            account_id=account_id,
            detail={"reason": "rate limited"},
        )
        raise too_many(
            "user_create_rate_limited",
            "You asked for too many users whose addresses were taken.",
            wait,
        )


@router.get(
    "/v1/users",
    response_model=UserPage,
    tags=["accounts"],
    summary="Users (administrators: all or one account's; managers: their account's)",
)
def list_users(
    principal: Caller,
    context: Auth,
    account_id: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="Only this account's.")
    ] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> UserPage:
    """Administrators: everybody (or one account's users); owners and fleet managers:
    the users of their account."""
    after = cursor_key("users", cursor, int)
    if not principal.is_admin:
        if principal.account_id is None or not can_manage_account(principal, principal.account_id):
            raise forbidden("Listing users is for administrators and account managers.")
        if account_id is not None and account_id != principal.account_id:
            raise account_not_found(account_id)
        account_id = principal.account_id
    users = context.accounts.list_users(account_id=account_id, after_id=after, limit=limit + 1)
    items, following = id_page([UserOut.model_validate(u) for u in users], limit, "users")
    return UserPage(items=items, next=following)


@router.get("/v1/users/{user_id}", response_model=UserOut, tags=["accounts"], summary="One user")
def get_user(user_id: IdPath, principal: Caller, context: Auth) -> UserOut:
    """Yourself, or (account managers, administrators) a user of your account."""
    return UserOut.model_validate(visible_user(context, principal, user_id))


@router.patch(
    "/v1/users/{user_id}",
    response_model=UserOut,
    tags=["accounts"],
    summary="Change a user: name, role, password, disabled",
)
def update_user(
    user_id: IdPath, body: UserUpdate, principal: Caller, context: Auth, audit: CallerAudit
) -> UserOut:
    """You may change your own name and password (give `current_password`); account
    managers and administrators may also change their users' role and disable them.
    Setting a password (your own, or a reset) and disabling a user end everything they
    are logged in with: every access token at once, every refresh token (login) and
    every API key; enabling them again brings none of it back."""
    user = visible_user(context, principal, user_id)  # yourself, or one you manage
    _check_update(context, principal, user, body)
    now = context.now_ms()
    updated = context.accounts.update_user(
        user_id,
        name=body.name,
        role=body.role.value if body.role is not None else None,
        password_hash=hash_password(body.password) if body.password is not None else None,
        **({"disabled_at": now if body.disabled else None} if body.disabled is not None else {}),
    )
    assert updated is not None
    ended = None
    if body.disabled or body.password is not None:
        ended = context.accounts.end_user_sessions(user_id, now=now)
        updated = context.accounts.get_user(user_id) or updated
    audit.record(
        "user_update",
        account_id=user.account_id,
        target=f"user:{user_id}",
        detail=_update_detail(body, ended),
    )
    return UserOut.model_validate(updated)


def _check_update(
    context: AuthContext, principal: Principal, user: UserRecord, body: UserUpdate
) -> None:
    """403 (or 404, for a user an owner sees but does not manage) unless the caller may
    make this change to ``user``; 422 for a weak new password."""
    own = user.id == principal.user_id
    if (body.role is not None or body.disabled is not None) and not can_change_role_or_disable(
        principal, user
    ):
        raise forbidden("Only administrators and account managers change roles or disable.")
    if (
        own
        and body.password is not None
        and not principal.is_admin
        and (
            body.current_password is None
            or not verify_password(password=body.current_password, password_hash=user.password_hash)
        )
    ):
        raise forbidden("Give your current password correctly to set a new one.")
    if not can_manage_user(principal, user):  # an owner's fellow owner: seen, not managed
        raise user_not_found(user.id)
    if body.role is not None:
        if own:
            raise forbidden("You cannot change your own role.")
        kind = None
        if user.account_id is not None:
            account = context.accounts.get_account(user.account_id)
            kind = AccountKind(account.kind) if account is not None else None
        if not can_create_user(
            principal, role=body.role, account_id=user.account_id, account_kind=kind
        ):
            raise forbidden(f"You cannot give this user the role {body.role.value}.")
    if body.disabled and own:
        raise forbidden("You cannot disable yourself.")
    if body.password is not None:
        password_ok(body.password, ["body", "password"])


def _update_detail(body: UserUpdate, ended: SessionsEnded | None) -> dict[str, Any]:
    """The audit detail of a user change: what changed, never the password itself."""
    changed = [k for k in ("name", "role", "disabled", "password") if getattr(body, k) is not None]
    return {
        "changed": changed,
        **({"role": body.role.value} if body.role is not None else {}),
        **({"disabled": body.disabled} if body.disabled is not None else {}),
        **(
            {
                "ended_logins": ended.refresh_sessions,
                "ended_integrations": ended.api_keys,
                "ended_web_sessions": ended.web_sessions,
            }
            if ended is not None
            else {}
        ),
    }
