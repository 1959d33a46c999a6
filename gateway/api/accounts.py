"""Accounts and access routes: log in, register, API keys, accounts, users, vehicle
provisioning, grants and the audit log.

Who may call what is decided by :mod:`gateway.auth.policy`; every change here is written
to the audit log (who, what, when, from where), and no response or log line ever contains a
password, token or key except the one response that creates it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, ValidationError

from gateway.api.errors import ApiError, invalid_request
from gateway.api.limits import MAX_ID
from gateway.api.models import ErrorDetail, ErrorResponse, Page
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.params import iso, iso_or_none
from gateway.api.security import (
    Auth,
    AuthContext,
    Caller,
    client_address,
    forbidden,
    principal_of,
    too_many,
    unauthenticated,
    vehicle_not_found,
)
from gateway.auth.passwords import (
    WeakPassword,
    check_password,
    generate_password,
    hash_password,
    needs_rehash,
    verify_nothing,
    verify_password,
)
from gateway.auth.policy import (
    ACCOUNT_ROLES,
    AccountKind,
    Principal,
    Role,
    can_create_user,
    can_manage_account,
)
from gateway.auth.provisioning import provision_vehicle, rotate_vehicle_password
from gateway.auth.tokens import hash_secret, issue_access_token, new_api_key, new_refresh_token
from gateway.statedb.accounts import (
    AccountRecord,
    ApiKeyRecord,
    DuplicateEmail,
    GrantRecord,
    NotFound,
    UserRecord,
    VehicleAlreadyProvisioned,
    VehicleRecord,
    normalize_email,
)
from gateway.statedb.audit import AuditRecord
from schemas import InvalidVinError, validate_vin
from schemas.commands import CommandType

__all__ = ["accounts_router"]

_EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
Email = Annotated[str, Field(pattern=_EMAIL_PATTERN, max_length=320, examples=["ana@example.com"])]
Password = Annotated[str, Field(min_length=1, max_length=256)]
#: an id in a body (a path or query id is bounded the same way: ``IdPath``, ``IdQuery``)
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, PathParam(ge=1, le=MAX_ID)]


def _times(**values: int | None) -> dict[str, int | str | None]:
    """Each time with its ISO 8601 twin: ``_times(created_at=1)`` ->
    ``{"created_at": 1, "created_at_iso": "1970-01-01T00:00:00.001Z"}``."""
    out: dict[str, int | str | None] = {}
    for name, ms in values.items():
        out[name] = ms
        out[f"{name}_iso"] = iso_or_none(ms)
    return out


# --- models --------------------------------------------------------------------------------


class TokenOut(BaseModel):
    """OAuth 2.0 token response (RFC 6749, section 5.1)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str
    refresh_expires_in: int


class RevokeRequest(BaseModel):
    """The JSON form of a logout; RFC 7009's form body (``token=...``) works too."""

    refresh_token: str = Field(max_length=200)


class RevokeForm(BaseModel):
    """RFC 7009, section 2.1: ``token`` and an optional ``token_type_hint``."""

    token: str = Field(max_length=200)
    token_type_hint: Literal["refresh_token", "access_token"] | None = None


class RegisterRequest(BaseModel):
    email: Email
    password: Password
    name: str = Field(min_length=1, max_length=200)


class AccountOut(BaseModel):
    id: int
    kind: AccountKind
    name: str
    created_at: int
    created_at_iso: str

    @classmethod
    def of(cls, a: AccountRecord) -> AccountOut:
        return cls.model_validate(
            {"id": a.id, "kind": a.kind, "name": a.name, **_times(created_at=a.created_at)}
        )


class AccountPage(Page):
    items: list[AccountOut] = Field(description="Oldest first.")


class AccountRequest(BaseModel):
    kind: AccountKind
    name: str = Field(min_length=1, max_length=200)


class UserOut(BaseModel):
    id: int
    email: str
    name: str
    role: Role
    account_id: int | None
    created_at: int
    created_at_iso: str
    disabled: bool

    @classmethod
    def of(cls, u: UserRecord) -> UserOut:
        return cls.model_validate(
            {
                "id": u.id,
                "email": u.email,
                "name": u.name,
                "role": u.role,
                "account_id": u.account_id,
                **_times(created_at=u.created_at),
                "disabled": u.disabled_at is not None,
            }
        )


class UserPage(Page):
    items: list[UserOut] = Field(description="Oldest first.")


class UserCreated(UserOut):
    password: str | None = Field(
        default=None, description="The generated password, shown only in this response."
    )


class UserRequest(BaseModel):
    email: Email
    name: str = Field(min_length=1, max_length=200)
    role: Role
    account_id: Id | None = Field(
        default=None, description="Default: your own account (required for admins)."
    )
    password: Password | None = Field(
        default=None, description="Default: a generated one, returned once."
    )


class UserUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    disabled: bool | None = None
    password: Password | None = None
    current_password: Password | None = Field(
        default=None, description="Required to change your own password."
    )


class GrantOut(BaseModel):
    id: int
    vin: str
    user_id: int
    services: list[str]
    granted_by: int | None
    created_at: int
    created_at_iso: str
    revoked_at: int | None
    revoked_at_iso: str | None

    @classmethod
    def of(cls, g: GrantRecord) -> GrantOut:
        return cls.model_validate(
            {
                "id": g.id,
                "vin": g.vin,
                "user_id": g.user_id,
                "services": list(g.services),
                "granted_by": g.granted_by,
                **_times(created_at=g.created_at, revoked_at=g.revoked_at),
            }
        )


class GrantPage(Page):
    items: list[GrantOut] = Field(description="Oldest first.")


class GrantRequest(BaseModel):
    email: Email | None = Field(default=None, description="The grantee, by e-mail address...")
    user_id: Id | None = Field(default=None, description="...or by id.")
    services: list[CommandType] = Field(
        description="Remote services (command types) the grantee may use; [] for read only."
    )


class MeOut(BaseModel):
    user: UserOut
    account: AccountOut | None
    grants: list[GrantOut]


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The key's public beginning, to tell keys apart.")
    user_id: int
    created_at: int
    created_at_iso: str
    last_used_at: int | None
    last_used_at_iso: str | None
    revoked_at: int | None
    revoked_at_iso: str | None

    @classmethod
    def of(cls, k: ApiKeyRecord) -> ApiKeyOut:
        return cls.model_validate(
            {
                "id": k.id,
                "name": k.name,
                "prefix": f"tgk_{k.prefix}",
                "user_id": k.user_id,
                **_times(
                    created_at=k.created_at, last_used_at=k.last_used_at, revoked_at=k.revoked_at
                ),
            }
        )


class ApiKeyPage(Page):
    items: list[ApiKeyOut] = Field(description="Oldest first, revoked ones included.")


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The API key, shown only in this response.")


class ApiKeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["fleet dashboard"])


class VehicleRequest(BaseModel):
    vin: str = Field(max_length=64, examples=["WVWZZZ1JZXW000001"])
    account_id: Id | None = Field(
        default=None, description="Default: your own account (required for admins)."
    )
    label: str | None = Field(default=None, max_length=200)
    credentials: Literal["password", "certificate"] = Field(
        default="password",
        description="'password': a random MQTT password, returned once; 'certificate': the "
        "unit authenticates with a client certificate whose common name is the VIN.",
    )


class RegistrationOut(BaseModel):
    vin: str
    account_id: int
    label: str | None
    credentials: Literal["password", "certificate"]
    provisioned_at: int
    provisioned_at_iso: str
    revoked_at: int | None
    revoked_at_iso: str | None

    @classmethod
    def of(cls, v: VehicleRecord) -> RegistrationOut:
        return cls.model_validate(
            {
                "vin": v.vin,
                "account_id": v.account_id,
                "label": v.label,
                "credentials": "password" if v.mqtt_password_hash is not None else "certificate",
                **_times(provisioned_at=v.provisioned_at, revoked_at=v.revoked_at),
            }
        )


class MqttCredentials(BaseModel):
    url: str | None = Field(description="Where the unit connects.")
    username: str = Field(description="The VIN.")
    password: str | None = Field(description="Shown only in this response.")


class ProvisionedOut(RegistrationOut):
    mqtt: MqttCredentials
    gateway_public_key: str | None = Field(
        description="PEM Ed25519 key the unit verifies signed commands with."
    )


class AuditOut(BaseModel):
    id: int
    at: int
    at_iso: str
    actor: str
    actor_user_id: int | None
    account_id: int | None
    action: str
    target: str | None
    outcome: str
    remote_addr: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, r: AuditRecord) -> AuditOut:
        return cls(
            id=r.id,
            at=r.at,
            at_iso=iso(r.at),
            actor=r.actor,
            actor_user_id=r.actor_user_id,
            account_id=r.account_id,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            remote_addr=r.remote_addr,
            detail=dict(r.detail) if r.detail is not None else None,
        )


class AuditPage(Page):
    items: list[AuditOut] = Field(description="Newest first.")


# --- helpers -------------------------------------------------------------------------------


def _password_ok(password: str, loc: list[str | int]) -> None:
    try:
        check_password(password)
    except WeakPassword as exc:
        raise invalid_request(loc, str(exc), "weak_password") from None


def _vin(vin: str) -> str:
    try:
        return validate_vin(vin)
    except InvalidVinError as exc:
        raise ApiError(
            422,
            "invalid_vin",
            f"{exc}.",
            [ErrorDetail(loc=["body", "vin"], msg=str(exc), type="invalid_vin", input=vin)],
        ) from None


def _user_not_found(user_id: int | str) -> ApiError:
    return ApiError(
        404, "user_not_found", f"No user {user_id} is visible to you. GET /v1/users lists them."
    )


def _account_not_found(account_id: int) -> ApiError:
    return ApiError(
        404,
        "account_not_found",
        f"No account {account_id} is visible to you. GET /v1/accounts lists them.",
    )


def _managed_vehicle(context: AuthContext, principal: Principal, vin: str) -> VehicleRecord:
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


def _visible_user(context: AuthContext, principal: Principal, user_id: int) -> UserRecord:
    user = context.accounts.get_user(user_id)
    if user is None:
        raise _user_not_found(user_id)
    if user.id == principal.user_id or can_manage_account(principal, user.account_id):
        return user
    raise _user_not_found(user_id)


def _target_account(principal: Principal, account_id: int | None, what: str) -> int:
    if account_id is None:
        if principal.account_id is None:
            raise invalid_request(
                ["body", "account_id"], f"say which account {what} belongs to", "missing"
            )
        return principal.account_id
    return account_id


def _issue_tokens(context: AuthContext, user: UserRecord) -> TokenOut:
    s = context.settings
    access, _ = issue_access_token(
        context.secret,
        user_id=user.id,
        role=user.role,
        account_id=user.account_id,
        now=context.now_s(),
        ttl_s=s.access_ttl_s,
    )
    refresh, refresh_hash, family = new_refresh_token()
    now = context.now_ms()
    context.accounts.create_refresh_token(
        user_id=user.id,
        family=family,
        token_hash=refresh_hash,
        expires_at=now + s.refresh_ttl_s * 1000,
        now=now,
    )
    return TokenOut(
        access_token=access,
        expires_in=s.access_ttl_s,
        refresh_token=refresh,
        refresh_expires_in=s.refresh_ttl_s,
    )


def _limit_attempts(context: AuthContext, request: Request) -> None:
    if context.logins is None:
        return
    wait = context.logins.acquire(f"addr:{client_address(request)}")
    if wait > 0:
        context.record(request, "login_throttled", outcome="denied")
        raise too_many("too_many_attempts", "Too many password attempts from your address.", wait)


def _lockout_s(context: AuthContext, failures: int) -> int | None:
    s = context.settings
    if failures < s.lockout_after:
        return None
    return int(min(2 ** (failures - s.lockout_after), s.max_lockout_s))


_HasId = TypeVar("_HasId", AccountOut, UserOut, GrantOut, ApiKeyOut, AuditOut)


def _id_page(items: list[_HasId], limit: int, kind: str) -> tuple[list[_HasId], str | None]:
    """One page of a list keyed by id (``items``: up to ``limit + 1``, in list order)."""
    return page_of(items, limit=limit, kind=kind, key=lambda item: [item.id])


_REVOKE_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": RevokeForm.model_json_schema()},
            "application/json": {"schema": RevokeRequest.model_json_schema()},
        },
    }
}


async def _revocation_token(request: Request) -> str:
    """The token to revoke, from RFC 7009's form body or the JSON one; 422 saying what to
    send otherwise."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            return RevokeForm.model_validate(dict(form)).token
        if content_type.startswith("application/json"):
            return RevokeRequest.model_validate_json(await request.body()).refresh_token
    except ValidationError:
        pass
    raise invalid_request(
        ["body"],
        "send the refresh token as the form body 'token=...' "
        "(Content-Type: application/x-www-form-urlencoded, RFC 7009) or as the JSON "
        '\'{"refresh_token": "..."}\' (Content-Type: application/json); this request sent '
        f"{content_type or 'no Content-Type'}",
        "revocation_body",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 429)
}


# --- routes --------------------------------------------------------------------------------


def accounts_router() -> APIRouter:
    router = APIRouter(responses=_ERRORS)

    # -- authentication ------------------------------------------------------------------

    @router.post(
        "/v1/auth/token",
        response_model=TokenOut,
        tags=["auth"],
        summary="Log in (OAuth 2.0 password grant) or refresh a token",
    )
    def token(
        request: Request,
        context: Auth,
        grant_type: Annotated[Literal["password", "refresh_token"], Form()],
        username: Annotated[str | None, Form(max_length=320)] = None,
        password: Annotated[str | None, Form(max_length=256)] = None,
        refresh_token: Annotated[str | None, Form(max_length=200)] = None,
    ) -> TokenOut:
        """Form-encoded, as OAuth 2.0 prescribes. `grant_type=password` with `username`
        (the e-mail address) and `password`, or `grant_type=refresh_token` with
        `refresh_token`. Answers a short-lived access token (send it as
        `Authorization: Bearer ...`) and a refresh token, which is replaced on every use.
        Repeated wrong passwords make the account wait before the next attempt (429)."""
        if grant_type == "refresh_token":
            if not refresh_token:
                raise invalid_request(
                    ["body", "refresh_token"], "give the refresh_token", "missing"
                )
            return _refresh(context, request, refresh_token)
        if not username or password is None:
            raise invalid_request(
                ["body", "username"], "give username (your e-mail) and password", "missing"
            )
        return _login(context, request, username, password)

    @router.post(
        "/v1/auth/revoke",
        status_code=204,
        tags=["auth"],
        summary="Log out: revoke a refresh token (and its successors)",
        openapi_extra=_REVOKE_BODY,
    )
    def revoke(
        request: Request, context: Auth, token: Annotated[str, Depends(_revocation_token)]
    ) -> None:
        """Revokes the refresh token's whole family, so no token from this login can be
        refreshed again. Takes RFC 7009's form body (`token=...&token_type_hint=...`,
        `application/x-www-form-urlencoded`) or JSON `{"refresh_token": "..."}`. Answers
        204 also for an unknown token, and for an access token, which cannot be revoked
        (it expires within minutes), as RFC 7009 allows."""
        record = context.accounts.revoke_refresh_token(hash_secret(token), now=context.now_ms())
        if record is not None:
            user = context.accounts.get_user(record.user_id)
            if user is not None:
                context.record(
                    request,
                    "logout",
                    principal=principal_of(user),
                    account_id=user.account_id,
                    target=f"user:{user.id}",
                )

    @router.post(
        "/v1/auth/register",
        response_model=UserOut,
        status_code=201,
        tags=["auth"],
        summary="Register a private account (you become its owner)",
    )
    def register(request: Request, context: Auth, body: RegisterRequest) -> UserOut:
        """Creates a private account and its owner. Log in afterwards with
        POST /v1/auth/token; add your car with POST /v1/vehicles."""
        if not context.settings.open_registration:
            raise forbidden("Registration is closed here; ask an administrator for an account.")
        _limit_attempts(context, request)
        _password_ok(body.password, ["body", "password"])
        if context.accounts.get_user_by_email(body.email) is not None:
            raise _email_taken(body.email)
        now = context.now_ms()
        account = context.accounts.create_account(AccountKind.PRIVATE, body.name, now=now)
        try:
            user = context.accounts.create_user(
                email=body.email,
                name=body.name,
                password_hash=hash_password(body.password),
                role=Role.OWNER,
                account_id=account.id,
                now=now,
            )
        except DuplicateEmail:
            raise _email_taken(body.email) from None
        context.record(
            request,
            "register",
            principal=principal_of(user),
            account_id=account.id,
            target=f"user:{user.id}",
        )
        return UserOut.of(user)

    @router.get("/v1/me", response_model=MeOut, tags=["auth"], summary="Who you are")
    def me(principal: Caller, context: Auth) -> MeOut:
        """Your user, your account and the vehicles shared with you (grants)."""
        user = context.accounts.get_user(principal.user_id)
        assert user is not None  # the principal was just loaded
        account = (
            context.accounts.get_account(user.account_id) if user.account_id is not None else None
        )
        grants = context.accounts.list_grants(user_id=user.id)
        return MeOut(
            user=UserOut.of(user),
            account=AccountOut.of(account) if account is not None else None,
            grants=[GrantOut.of(g) for g in grants],
        )

    # -- API keys ------------------------------------------------------------------------

    @router.post(
        "/v1/api-keys",
        response_model=ApiKeyCreated,
        status_code=201,
        tags=["auth"],
        summary="Create an API key for an integration",
    )
    def create_api_key(
        request: Request, principal: Caller, context: Auth, body: ApiKeyRequest
    ) -> ApiKeyCreated:
        """The key acts as you, with your rights; it is shown only in this response (only
        a hash is stored). Send it as `Authorization: Bearer tgk_...` or `X-API-Key`."""
        key, prefix, key_hash = new_api_key()
        record = context.accounts.create_api_key(
            user_id=principal.user_id,
            name=body.name,
            prefix=prefix,
            key_hash=key_hash,
            now=context.now_ms(),
        )
        context.record(
            request,
            "api_key_create",
            principal=principal,
            account_id=principal.account_id,
            target=f"api_key:{record.id}",
            detail={"name": body.name, "prefix": f"tgk_{prefix}"},
        )
        return ApiKeyCreated(**ApiKeyOut.of(record).model_dump(), key=key)

    @router.get("/v1/api-keys", response_model=ApiKeyPage, tags=["auth"], summary="Your API keys")
    def list_api_keys(
        principal: Caller, context: Auth, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
    ) -> ApiKeyPage:
        """Your keys, revoked ones included; never the keys themselves."""
        after = cursor_key("api-keys", cursor, int)
        keys = context.accounts.list_api_keys(principal.user_id, after_id=after, limit=limit + 1)
        items, following = _id_page([ApiKeyOut.of(k) for k in keys], limit, "api-keys")
        return ApiKeyPage(items=items, next=following)

    @router.delete(
        "/v1/api-keys/{key_id}",
        response_model=ApiKeyOut,
        tags=["auth"],
        summary="Revoke an API key",
    )
    def revoke_api_key(
        request: Request, principal: Caller, context: Auth, key_id: IdPath
    ) -> ApiKeyOut:
        """Your own key, or (administrators) anyone's. Effective immediately."""
        record = context.accounts.get_api_key(key_id)
        if record is None or (record.user_id != principal.user_id and not principal.is_admin):
            raise ApiError(
                404, "api_key_not_found", f"No API key {key_id}. GET /v1/api-keys lists yours."
            )
        revoked = context.accounts.revoke_api_key(key_id, now=context.now_ms()) or record
        context.record(
            request,
            "api_key_revoke",
            principal=principal,
            account_id=principal.account_id,
            target=f"api_key:{key_id}",
            detail={"prefix": f"tgk_{record.prefix}"},
        )
        return ApiKeyOut.of(revoked)

    # -- accounts ------------------------------------------------------------------------

    @router.post(
        "/v1/accounts",
        response_model=AccountOut,
        status_code=201,
        tags=["accounts"],
        summary="Create an account (organization or private); administrators",
    )
    def create_account(
        request: Request, principal: Caller, context: Auth, body: AccountRequest
    ) -> AccountOut:
        """An enterprise customer's organization, or a private account. Then add its
        users with POST /v1/users."""
        if not principal.is_admin:
            raise forbidden("Creating accounts is for administrators.")
        account = context.accounts.create_account(body.kind, body.name, now=context.now_ms())
        context.record(
            request,
            "account_create",
            principal=principal,
            account_id=account.id,
            target=f"account:{account.id}",
            detail={"kind": body.kind.value, "name": body.name},
        )
        return AccountOut.of(account)

    @router.get(
        "/v1/accounts",
        response_model=AccountPage,
        tags=["accounts"],
        summary="Accounts (administrators: all; others: their own)",
    )
    def list_accounts(
        principal: Caller, context: Auth, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
    ) -> AccountPage:
        """Administrators see every account; everybody else the one they belong to."""
        after = cursor_key("accounts", cursor, int)
        after_id = after
        if principal.is_admin:
            accounts = context.accounts.list_accounts(after_id=after_id, limit=limit + 1)
        else:
            own = (
                context.accounts.get_account(principal.account_id)
                if principal.account_id is not None and (after_id or 0) < principal.account_id
                else None
            )
            accounts = [own] if own is not None else []
        items, following = _id_page([AccountOut.of(a) for a in accounts], limit, "accounts")
        return AccountPage(items=items, next=following)

    @router.get(
        "/v1/accounts/{account_id}",
        response_model=AccountOut,
        tags=["accounts"],
        summary="One account",
    )
    def get_account(account_id: IdPath, principal: Caller, context: Auth) -> AccountOut:
        """Your own account (administrators: any). Others answer 404."""
        if not principal.is_admin and principal.account_id != account_id:
            raise _account_not_found(account_id)
        account = context.accounts.get_account(account_id)
        if account is None:
            raise _account_not_found(account_id)
        return AccountOut.of(account)

    # -- users ---------------------------------------------------------------------------

    @router.post(
        "/v1/users",
        response_model=UserCreated,
        status_code=201,
        tags=["accounts"],
        summary="Create a user",
    )
    def create_user(
        request: Request, principal: Caller, context: Auth, body: UserRequest
    ) -> UserCreated:
        """Administrators create anyone; fleet managers create fleet managers, viewers
        and drivers of their organization; owners create drivers of their private account
        (then share a vehicle with them: POST /v1/vehicles/{vin}/grants). Without a
        password one is generated and returned once."""
        account_id = (
            None
            if body.role is Role.ADMIN
            else _target_account(principal, body.account_id, "the user")
        )
        account = context.accounts.get_account(account_id) if account_id is not None else None
        if account_id is not None and account is None:
            raise _account_not_found(account_id)
        kind = AccountKind(account.kind) if account is not None else None
        if not can_create_user(principal, role=body.role, account_id=account_id, account_kind=kind):
            if (
                account_id is not None
                and principal.account_id != account_id
                and not principal.is_admin
            ):
                raise _account_not_found(account_id)
            allowed = ", ".join(sorted(ACCOUNT_ROLES[kind])) if kind is not None else "none"
            raise forbidden(
                f"You cannot create a user with role {body.role.value} here (roles of a "
                f"{kind.value if kind else 'missing'} account: {allowed}; owners create "
                "drivers, administrators create administrators)."
            )
        generated = None
        if body.password is None:
            generated = generate_password()
        else:
            _password_ok(body.password, ["body", "password"])
        try:
            user = context.accounts.create_user(
                email=body.email,
                name=body.name,
                password_hash=hash_password(body.password or generated or ""),
                role=body.role,
                account_id=account_id,
                now=context.now_ms(),
            )
        except DuplicateEmail:
            raise _email_taken(body.email) from None
        context.record(
            request,
            "user_create",
            principal=principal,
            account_id=account_id,
            target=f"user:{user.id}",
            detail={"email": user.email, "role": user.role},
        )
        return UserCreated(**UserOut.of(user).model_dump(), password=generated)

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
            if principal.account_id is None or not can_manage_account(
                principal, principal.account_id
            ):
                raise forbidden("Listing users is for administrators and account managers.")
            if account_id is not None and account_id != principal.account_id:
                raise _account_not_found(account_id)
            account_id = principal.account_id
        users = context.accounts.list_users(account_id=account_id, after_id=after, limit=limit + 1)
        items, following = _id_page([UserOut.of(u) for u in users], limit, "users")
        return UserPage(items=items, next=following)

    @router.get(
        "/v1/users/{user_id}", response_model=UserOut, tags=["accounts"], summary="One user"
    )
    def get_user(user_id: IdPath, principal: Caller, context: Auth) -> UserOut:
        """Yourself, or (account managers, administrators) a user of your account."""
        return UserOut.of(_visible_user(context, principal, user_id))

    @router.patch(
        "/v1/users/{user_id}",
        response_model=UserOut,
        tags=["accounts"],
        summary="Change a user: name, role, password, disabled",
    )
    def update_user(
        request: Request, user_id: IdPath, body: UserUpdate, principal: Caller, context: Auth
    ) -> UserOut:
        """You may change your own name and password (give `current_password`); account
        managers and administrators may also change their users' role and disable them.
        Disabling a user or setting their password logs them out everywhere."""
        user = _visible_user(context, principal, user_id)  # yourself, or one you manage
        own = user.id == principal.user_id
        manages = principal.is_admin or (not own and can_manage_account(principal, user.account_id))
        if (body.role is not None or body.disabled is not None) and not manages:
            raise forbidden("Only administrators and account managers change roles or disable.")
        if (
            own
            and body.password is not None
            and not principal.is_admin
            and (
                body.current_password is None
                or not verify_password(user.password_hash, body.current_password)
            )
        ):
            raise forbidden("Give your current password correctly to set a new one.")
        if principal.role is Role.OWNER and not own and user.role != Role.DRIVER:
            raise _user_not_found(user_id)
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
            _password_ok(body.password, ["body", "password"])
        now = context.now_ms()
        updated = context.accounts.update_user(
            user_id,
            name=body.name,
            role=body.role.value if body.role is not None else None,
            password_hash=hash_password(body.password) if body.password is not None else None,
            **(
                {"disabled_at": now if body.disabled else None} if body.disabled is not None else {}
            ),
        )
        assert updated is not None
        if body.disabled or body.password is not None:
            context.accounts.revoke_user_refresh_tokens(user_id, now=now)
        changed = [
            k for k in ("name", "role", "disabled", "password") if getattr(body, k) is not None
        ]
        context.record(
            request,
            "user_update",
            principal=principal,
            account_id=user.account_id,
            target=f"user:{user_id}",
            detail={
                "changed": changed,
                **({"role": body.role.value} if body.role is not None else {}),
                **({"disabled": body.disabled} if body.disabled is not None else {}),
            },
        )
        return UserOut.of(updated)

    # -- vehicles: provisioning ----------------------------------------------------------

    @router.post(
        "/v1/vehicles",
        response_model=ProvisionedOut,
        status_code=201,
        tags=["provisioning"],
        summary="Provision a vehicle: register it and create its broker credentials",
    )
    def provision(
        request: Request, principal: Caller, context: Auth, body: VehicleRequest
    ) -> ProvisionedOut:
        """Owners add their car, fleet managers their organization's vehicles,
        administrators any. The answer holds the unit's MQTT credentials (user name = VIN;
        the password is shown only here) and the gateway's public key for verifying signed
        commands; the broker accepts the unit within a second."""
        vin = _vin(body.vin)
        account_id = _target_account(principal, body.account_id, "the vehicle")
        if not can_manage_account(principal, account_id):
            if principal.account_id is not None and principal.account_id == account_id:
                raise forbidden("Only owners, fleet managers and administrators add vehicles.")
            raise _account_not_found(account_id)
        try:
            result = provision_vehicle(
                context.accounts,
                vin=vin,
                account_id=account_id,
                label=body.label,
                provisioned_by=principal.user_id,
                now=context.now_ms(),
                password=body.credentials == "password",
            )
        except NotFound:  # the account (the caller exists: they are logged in)
            raise _account_not_found(account_id) from None
        except VehicleAlreadyProvisioned:
            context.record(
                request,
                "vehicle_provision",
                principal=principal,
                outcome="failed",
                account_id=account_id,
                target=f"vehicle:{vin}",
                detail={"error": "already provisioned"},
            )
            raise ApiError(
                409,
                "vehicle_already_provisioned",
                f"Vehicle {vin} is already provisioned. To give it new credentials use "
                f"POST /v1/vehicles/{vin}/credentials; to move it, revoke it first.",
            ) from None
        context.record(
            request,
            "vehicle_provision",
            principal=principal,
            account_id=account_id,
            target=f"vehicle:{vin}",
            detail={"credentials": body.credentials, "label": body.label},
        )
        return _provisioned(context, result.vehicle, result.mqtt_password)

    @router.get(
        "/v1/vehicles/{vin}/registration",
        response_model=RegistrationOut,
        tags=["provisioning"],
        summary="A vehicle's registration: account, label, provisioned and revoked times",
    )
    def registration(vin: str, principal: Caller, context: Auth) -> RegistrationOut:
        """For anyone who may see the vehicle; never its credentials."""
        access, vehicle = context.lookup(principal, vin)
        if not access.read or vehicle is None:
            raise vehicle_not_found(vin)
        return RegistrationOut.of(vehicle)

    @router.delete(
        "/v1/vehicles/{vin}",
        response_model=RegistrationOut,
        tags=["provisioning"],
        summary="Revoke a vehicle: cut it off the broker, end its grants",
    )
    def revoke_vehicle(
        request: Request, vin: str, principal: Caller, context: Auth
    ) -> RegistrationOut:
        """The broker refuses the unit from its next reload (within a second); the gateway
        drops anything it still sends. Its data stays; provisioning it again gives it new
        credentials."""
        vehicle = _managed_vehicle(context, principal, vin)
        revoked = context.accounts.revoke_vehicle(vin, now=context.now_ms()) or vehicle
        context.record(
            request,
            "vehicle_revoke",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
        )
        return RegistrationOut.of(revoked)

    @router.post(
        "/v1/vehicles/{vin}/credentials",
        response_model=ProvisionedOut,
        tags=["provisioning"],
        summary="Give a vehicle a new MQTT password",
    )
    def rotate_credentials(
        request: Request, vin: str, principal: Caller, context: Auth
    ) -> ProvisionedOut:
        """The old password stops working within a second; the new one is shown only here."""
        vehicle = _managed_vehicle(context, principal, vin)
        result = rotate_vehicle_password(context.accounts, vin)
        if result is None:
            raise vehicle_not_found(vin)
        context.record(
            request,
            "vehicle_credentials_rotate",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
        )
        return _provisioned(context, result.vehicle, result.mqtt_password)

    # -- grants --------------------------------------------------------------------------

    @router.post(
        "/v1/vehicles/{vin}/grants",
        response_model=GrantOut,
        status_code=201,
        tags=["provisioning"],
        summary="Share a vehicle with a user, limited to some remote services",
    )
    def create_grant(
        request: Request, vin: str, body: GrantRequest, principal: Caller, context: Auth
    ) -> GrantOut:
        """The grantee sees the vehicle and may use exactly `services`. A new grant for
        the same user replaces the old one."""
        vehicle = _managed_vehicle(context, principal, vin)
        if (body.email is None) == (body.user_id is None):
            raise invalid_request(
                ["body", "email"], "give exactly one of email and user_id", "missing"
            )
        grantee = (
            context.accounts.get_user_by_email(body.email)
            if body.email is not None
            else context.accounts.get_user(body.user_id or 0)
        )
        if grantee is None:
            raise _user_not_found(body.email or body.user_id or "")
        services = sorted({s.value for s in body.services})
        grant = context.accounts.create_grant(
            vin=vin,
            user_id=grantee.id,
            services=services,
            granted_by=principal.user_id,
            now=context.now_ms(),
        )
        context.record(
            request,
            "grant_create",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"grant_id": grant.id, "user_id": grantee.id, "services": services},
        )
        return GrantOut.of(grant)

    @router.get(
        "/v1/vehicles/{vin}/grants",
        response_model=GrantPage,
        tags=["provisioning"],
        summary="Who a vehicle is shared with",
    )
    def list_grants(
        vin: str,
        principal: Caller,
        context: Auth,
        include_revoked: bool = False,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> GrantPage:
        """The vehicle's active grants (and revoked ones with `include_revoked`); for
        those who manage the vehicle."""
        after = cursor_key("grants", cursor, int)
        _managed_vehicle(context, principal, vin)
        grants = context.accounts.list_grants(
            vin=vin, include_revoked=include_revoked, after_id=after, limit=limit + 1
        )
        items, following = _id_page([GrantOut.of(g) for g in grants], limit, "grants")
        return GrantPage(items=items, next=following)

    @router.delete(
        "/v1/vehicles/{vin}/grants/{grant_id}",
        response_model=GrantOut,
        tags=["provisioning"],
        summary="Stop sharing a vehicle with a user",
    )
    def revoke_grant(
        request: Request, vin: str, grant_id: IdPath, principal: Caller, context: Auth
    ) -> GrantOut:
        """The grantee loses access at once (their next request)."""
        vehicle = _managed_vehicle(context, principal, vin)
        grant = context.accounts.get_grant(grant_id)
        if grant is None or grant.vin != vin:
            raise ApiError(
                404,
                "grant_not_found",
                f"Vehicle {vin} has no grant {grant_id}; GET /v1/vehicles/{vin}/grants lists them.",
            )
        revoked = context.accounts.revoke_grant(grant_id, now=context.now_ms()) or grant
        context.record(
            request,
            "grant_revoke",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"grant_id": grant_id, "user_id": grant.user_id},
        )
        return GrantOut.of(revoked)

    # -- audit ---------------------------------------------------------------------------

    @router.get(
        "/v1/audit",
        response_model=AuditPage,
        tags=["audit"],
        summary="The audit log (administrators; fleet managers: their organization's)",
    )
    def audit(
        principal: Caller,
        context: Auth,
        account_id: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="Only this account's.")
        ] = None,
        action: Annotated[str | None, Query(max_length=64)] = None,
        target: Annotated[str | None, Query(max_length=200)] = None,
        actor_user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> AuditPage:
        """Every command, login, grant, provisioning and administrative change: who, what,
        when, from which address; newest first."""
        before = cursor_key("audit", cursor, int)
        if not principal.is_admin:
            if principal.role is not Role.FLEET_MANAGER or principal.account_id is None:
                raise forbidden("The audit log is for administrators and fleet managers.")
            if account_id is not None and account_id != principal.account_id:
                raise _account_not_found(account_id)
            account_id = principal.account_id
        rows = context.audit.query(
            account_id=account_id,
            action=action,
            target=target,
            actor_user_id=actor_user_id,
            before_id=before,
            limit=limit + 1,
        )
        items, following = _id_page([AuditOut.of(r) for r in rows], limit, "audit")
        return AuditPage(items=items, next=following)

    return router


# --- login ---------------------------------------------------------------------------------


def _email_taken(email: str) -> ApiError:
    return ApiError(
        409,
        "email_taken",
        f"There is already a user with the e-mail address {email}; log in, or use another.",
    )


def _bad_login() -> ApiError:
    return unauthenticated(
        "invalid_grant", "Wrong e-mail address or password (or the user is disabled)."
    )


def _login(context: AuthContext, request: Request, username: str, password: str) -> TokenOut:
    _limit_attempts(context, request)
    user = context.accounts.get_user_by_email(username)
    if user is None:
        verify_nothing(password)
        context.record(
            request, "login", outcome="failed", detail={"email": normalize_email(username)}
        )
        raise _bad_login()
    principal = principal_of(user)
    now = context.now_ms()
    if user.locked_until is not None and user.locked_until > now:
        context.record(
            request,
            "login",
            principal=principal,
            outcome="denied",
            account_id=user.account_id,
            detail={"reason": "locked"},
        )
        raise too_many(
            "login_locked",
            "Too many wrong passwords for this account; it must wait before the next attempt.",
            (user.locked_until - now) / 1000,
        )
    if not verify_password(user.password_hash, password) or user.disabled_at is not None:
        wrong = user.disabled_at is None
        lock_s = _lockout_s(context, user.failed_logins + 1) if wrong else None
        if wrong:
            context.accounts.record_login_failure(
                user.id, locked_until=None if lock_s is None else now + lock_s * 1000
            )
        context.record(
            request,
            "login",
            principal=principal,
            outcome="failed",
            account_id=user.account_id,
            detail={"reason": "wrong password" if wrong else "disabled"},
        )
        raise _bad_login()
    if user.failed_logins or user.locked_until is not None:
        context.accounts.record_login_success(user.id)
    if needs_rehash(user.password_hash):
        context.accounts.update_user(user.id, password_hash=hash_password(password))
    tokens = _issue_tokens(context, user)
    context.record(request, "login", principal=principal, account_id=user.account_id)
    return tokens


def _refresh(context: AuthContext, request: Request, refresh_token: str) -> TokenOut:
    s = context.settings
    now = context.now_ms()
    new_token, new_hash, _ = new_refresh_token()
    outcome, record = context.accounts.rotate_refresh_token(
        hash_secret(refresh_token),
        new_token_hash=new_hash,
        new_expires_at=now + s.refresh_ttl_s * 1000,
        now=now,
    )
    if outcome != "ok" or record is None:
        context.record(request, "token_refresh", outcome="denied", detail={"reason": outcome})
        why = {
            "reused": "it was already used once, so this login has been ended everywhere "
            "(a stolen token?)",
            "expired": "it has expired",
            "revoked": "it was revoked (logout)",
        }.get(outcome, "it is not valid")
        raise unauthenticated(
            "invalid_grant", f"The refresh token is refused: {why}. Log in again."
        )
    user = context.accounts.get_user(record.user_id)
    if user is None or user.disabled_at is not None:
        raise _bad_login()
    access, _ = issue_access_token(
        context.secret,
        user_id=user.id,
        role=user.role,
        account_id=user.account_id,
        now=context.now_s(),
        ttl_s=s.access_ttl_s,
    )
    context.record(
        request, "token_refresh", principal=principal_of(user), account_id=user.account_id
    )
    return TokenOut(
        access_token=access,
        expires_in=s.access_ttl_s,
        refresh_token=new_token,
        refresh_expires_in=s.refresh_ttl_s,
    )


def _provisioned(
    context: AuthContext, vehicle: VehicleRecord, password: str | None
) -> ProvisionedOut:
    key_path = context.settings.signing_public_key_path
    public_key = None
    if key_path is not None:
        try:
            public_key = key_path.read_text(encoding="ascii")
        except OSError:
            public_key = None
    return ProvisionedOut(
        **RegistrationOut.of(vehicle).model_dump(),
        mqtt=MqttCredentials(
            url=context.settings.broker_url, username=vehicle.vin, password=password
        ),
        gateway_public_key=public_key,
    )
