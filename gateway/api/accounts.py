"""Accounts and access routes: log in, register, API keys, accounts, users, vehicle
provisioning, grants, invitations and the audit log.

Who may call what is decided by :mod:`gateway.auth.policy`; every change here is written
to the audit log (who, what, when, from where), and no response or log line ever contains a
password, token or key except the one response that creates it (sent with
``Cache-Control: no-store``, RFC 6749 5.1).

Sharing a vehicle: a manager grants it directly to a user of the vehicle's own account; to
anyone else they send an invitation by e-mail address, which becomes a grant only when the
recipient accepts it. The answer to an invitation is the same whether or not the address
has an account, and invitations are rate limited per user, so sharing cannot be used to
find out who has an account, nor to push a car into a stranger's view.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Depends, Form, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, Field, ValidationError

from gateway.accounts.provisioning import provision_vehicle, rotate_vehicle_password
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
from gateway.auth.tokens import hash_secret, issue_access_token, new_api_key, new_refresh_token
from gateway.core.lockout import lockout_ms
from gateway.statedb.accounts import (
    AccountRecord,
    ApiKeyRecord,
    DuplicateEmail,
    GrantRecord,
    InvitationClosed,
    InvitationRecord,
    NotFound,
    UserRecord,
    VehicleAlreadyProvisioned,
    VehicleRecord,
    normalize_email,
)
from gateway.statedb.audit import AuditRecord
from gateway.text import check_plain_text, for_log
from schemas import InvalidVinError, validate_vin
from schemas.commands import CommandType

__all__ = ["accounts_router"]


def _plain(value: str) -> str:
    return check_plain_text(value, "the text")


_EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
Email = Annotated[
    str,
    Field(pattern=_EMAIL_PATTERN, max_length=320, examples=["ana@example.com"]),
    AfterValidator(_plain),
]
Password = Annotated[str, Field(min_length=1, max_length=256)]
#: a name or label people type and others read: plain text, no control or invisible
#: formatting characters (gateway.text)
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_plain)]
#: what a grant or invitation gives: reading the vehicle, and remote services
GrantService = Literal["read"] | CommandType
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
    name: Name


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
    name: Name


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
    name: Name
    role: Role
    account_id: Id | None = Field(
        default=None, description="Default: your own account (required for admins)."
    )
    password: Password | None = Field(
        default=None, description="Default: a generated one, returned once."
    )


class UserUpdate(BaseModel):
    name: Name | None = None
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
    email: Email | None = Field(
        default=None,
        description="The grantee, a user of the vehicle's account, by e-mail address...",
    )
    user_id: Id | None = Field(default=None, description="...or by id.")
    services: list[GrantService] = Field(
        min_length=1,
        description="What the grantee may do: 'read' (state, history, the vehicle's "
        "commands) and remote services (command types), e.g. ['read', 'lock', 'locate'].",
    )


class InvitationRequest(BaseModel):
    email: Email = Field(description="Whoever logs in with this address may accept.")
    services: list[GrantService] = Field(
        min_length=1, description="What accepting gives: as for a grant."
    )


class InvitationOut(BaseModel):
    id: int
    vin: str
    email: str
    services: list[str]
    status: Literal["pending", "accepted", "declined", "withdrawn", "expired"]
    created_at: int
    created_at_iso: str
    expires_at: int
    expires_at_iso: str
    decided_at: int | None
    decided_at_iso: str | None

    @classmethod
    def of(cls, i: InvitationRecord, now: int) -> InvitationOut:
        status = "expired" if i.status == "pending" and now >= i.expires_at else i.status
        return cls.model_validate(
            {
                "id": i.id,
                "vin": i.vin,
                "email": i.email,
                "services": list(i.services),
                "status": status,
                **_times(created_at=i.created_at, expires_at=i.expires_at, decided_at=i.decided_at),
            }
        )


class InvitationPage(Page):
    items: list[InvitationOut] = Field(description="Oldest first.")


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
    name: Name = Field(examples=["fleet dashboard"])


class VehicleRequest(BaseModel):
    vin: str = Field(max_length=64, examples=["WVWZZZ1JZXW000001"])
    account_id: Id | None = Field(
        default=None, description="Default: your own account (required for admins)."
    )
    label: Annotated[str, Field(max_length=200), AfterValidator(_plain)] | None = None
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
    tenure: int = Field(
        description="Which holding period of the VIN this is (1 for its first holder, 2 for "
        "the next, ...); the data you read is this period's only."
    )

    @classmethod
    def of(cls, v: VehicleRecord) -> RegistrationOut:
        return cls.model_validate(
            {
                "vin": v.vin,
                "account_id": v.account_id,
                "label": v.label,
                "credentials": "password" if v.mqtt_password_hash is not None else "certificate",
                **_times(provisioned_at=v.provisioned_at, revoked_at=v.revoked_at),
                "tenure": v.tenure,
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


def _managed_user_or_self(
    context: AuthContext, principal: Principal, user_id: int
) -> UserRecord | None:
    """The user if it is the caller or one they manage (administrators: anyone; fleet
    managers: their organization's users; owners: their private account's drivers), else
    None (answered like an unknown user)."""
    user = context.accounts.get_user(user_id)
    if user is None:
        return None
    if user.id == principal.user_id or principal.is_admin:
        return user
    if not can_manage_account(principal, user.account_id):
        return None
    if principal.role is Role.OWNER and user.role != Role.DRIVER:
        return None
    return user


def _target_account(principal: Principal, account_id: int | None, what: str) -> int:
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


def _access_token(context: AuthContext, user: UserRecord) -> str:
    access, _ = issue_access_token(
        context.secret,
        user_id=user.id,
        role=user.role,
        account_id=user.account_id,
        now=context.now_s(),
        ttl_s=context.settings.access_ttl_s,
        token_version=user.token_version,
    )
    return access


def _issue_tokens(context: AuthContext, user: UserRecord) -> TokenOut:
    s = context.settings
    access = _access_token(context, user)
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


def _lockout_ms(context: AuthContext, failures: int) -> int | None:
    """How long an address waits after ``failures`` wrong passwords in a row for a user:
    nothing before ``lockout_after``, then 1 s, 2 s, 4 s, ... up to ``max_lockout_s``."""
    s = context.settings
    return lockout_ms(failures, lockout_after=s.lockout_after, max_lockout_s=s.max_lockout_s)


_HasId = TypeVar("_HasId", AccountOut, UserOut, GrantOut, ApiKeyOut, AuditOut, InvitationOut)


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
        response: Response,
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
        Repeated wrong passwords for an account from one address make that address wait
        before its next attempt (429); other addresses are not held up."""
        no_store(response)
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
        request: Request, response: Response, principal: Caller, context: Auth, body: ApiKeyRequest
    ) -> ApiKeyCreated:
        """The key acts as you, with your rights; it is shown only in this response (only
        a hash is stored). Send it as `Authorization: Bearer tgk_...` or `X-API-Key`. It ends
        when you revoke it, when your password is changed or reset, and when you are
        disabled."""
        no_store(response)
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
        """Your own key, or one of a user you manage (owners: their drivers'; fleet
        managers: their organization's users'; administrators: anyone's). Effective
        immediately."""
        record = context.accounts.get_api_key(key_id)
        owner = (
            None if record is None else _managed_user_or_self(context, principal, record.user_id)
        )
        if record is None or owner is None:
            raise ApiError(
                404, "api_key_not_found", f"No API key {key_id}. GET /v1/api-keys lists yours."
            )
        revoked = context.accounts.revoke_api_key(key_id, now=context.now_ms()) or record
        context.record(
            request,
            "api_key_revoke",
            principal=principal,
            account_id=owner.account_id,
            target=f"api_key:{key_id}",
            detail={"prefix": f"tgk_{record.prefix}", "user_id": record.user_id},
        )
        return ApiKeyOut.of(revoked)

    @router.get(
        "/v1/users/{user_id}/api-keys",
        response_model=ApiKeyPage,
        tags=["accounts"],
        summary="A user's API keys (yours, or those of a user you manage)",
    )
    def list_user_api_keys(
        user_id: IdPath,
        principal: Caller,
        context: Auth,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> ApiKeyPage:
        """The user's keys, revoked ones included; never the keys themselves. Owners see
        their drivers' keys, fleet managers those of their organization's users,
        administrators everyone's; revoke one with DELETE /v1/api-keys/{id}."""
        after = cursor_key("user-api-keys", cursor, int)
        user = _managed_user_or_self(context, principal, user_id)
        if user is None:
            raise _user_not_found(user_id)
        keys = context.accounts.list_api_keys(user.id, after_id=after, limit=limit + 1)
        items, following = _id_page([ApiKeyOut.of(k) for k in keys], limit, "user-api-keys")
        return ApiKeyPage(items=items, next=following)

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
        request: Request, response: Response, principal: Caller, context: Auth, body: UserRequest
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
            no_store(response)
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
        Setting a password (your own, or a reset) and disabling a user end everything they
        are logged in with: every access token at once, every refresh token (login) and
        every API key; enabling them again brings none of it back."""
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
                or not verify_password(
                    password=body.current_password, password_hash=user.password_hash
                )
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
        ended = None
        if body.disabled or body.password is not None:
            ended = context.accounts.end_user_sessions(user_id, now=now)
            updated = context.accounts.get_user(user_id) or updated
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
                **(
                    {"ended_logins": ended.refresh_sessions, "ended_integrations": ended.api_keys}
                    if ended is not None
                    else {}
                ),
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
        request: Request,
        response: Response,
        principal: Caller,
        context: Auth,
        body: VehicleRequest,
    ) -> ProvisionedOut:
        """Owners add their car, fleet managers their organization's vehicles,
        administrators any. The answer holds the unit's MQTT credentials (user name = VIN;
        the password is shown only here) and the gateway's public key for verifying signed
        commands; the broker accepts the unit within a second.

        Claiming a VIN: a VIN another account holds is refused (409
        `vehicle_held_by_another_account`): its holder must revoke it first. A VIN nobody
        holds, never provisioned or revoked by its last holder, may be claimed by anyone
        who may add vehicles, and starts a new holding period: the new holder sees none of
        what the vehicle reported, was sent or shared before."""
        no_store(response)
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
        except VehicleAlreadyProvisioned as exc:
            own = exc.account_id == account_id
            context.record(
                request,
                "vehicle_provision",
                principal=principal,
                outcome="failed",
                account_id=account_id,
                target=f"vehicle:{vin}",
                detail={"error": "already provisioned" if own else "held by another account"},
            )
            raise _already_held(vin, own) from None
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
        summary="Revoke a vehicle: off the broker; its holding period, grants and commands end",
    )
    def revoke_vehicle(
        request: Request, vin: str, principal: Caller, context: Auth
    ) -> RegistrationOut:
        """The broker refuses the unit from its next reload (within a second); the gateway
        drops anything it still sends. Its open commands (queued, sent, accepted) are
        cancelled with the reason `vehicle_revoked` and never delivered, its grants end and
        its pending invitations are withdrawn. Its holding period ends: whoever provisions
        the VIN next (anyone may, see POST /v1/vehicles) starts a new one and sees none of
        this period's data, commands or grants."""
        vehicle = _managed_vehicle(context, principal, vin)
        revoked = (
            context.accounts.revoke_vehicle(vin, now=context.now_ms(), by=principal.user_id)
            or vehicle
        )
        context.record(
            request,
            "vehicle_revoke",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"tenure": vehicle.tenure},
        )
        return RegistrationOut.of(revoked)

    @router.post(
        "/v1/vehicles/{vin}/credentials",
        response_model=ProvisionedOut,
        tags=["provisioning"],
        summary="Give a vehicle a new MQTT password",
    )
    def rotate_credentials(
        request: Request, response: Response, vin: str, principal: Caller, context: Auth
    ) -> ProvisionedOut:
        """The old password stops working within a second; the new one is shown only here."""
        no_store(response)
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

    # -- grants and invitations ----------------------------------------------------------

    @router.post(
        "/v1/vehicles/{vin}/grants",
        response_model=GrantOut,
        status_code=201,
        tags=["provisioning"],
        summary="Share a vehicle with a user of its account, limited to some services",
    )
    def create_grant(
        request: Request, vin: str, body: GrantRequest, principal: Caller, context: Auth
    ) -> GrantOut:
        """The grantee, a user of the vehicle's own account (an owner's driver, a fleet's
        driver), may do exactly `services`: `read` (state, history, the vehicle's commands)
        and the remote services listed. A new grant for the same user replaces the old one.
        To share with anyone else, invite them: POST /v1/vehicles/{vin}/invitations."""
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
        # a user of another account is answered exactly like one that does not exist
        if grantee is None or grantee.account_id != vehicle.account_id:
            raise ApiError(
                404,
                "user_not_found",
                f"The vehicle's account has no user {body.email or body.user_id}. To share "
                f"the vehicle with someone outside it, invite them: POST /v1/vehicles/{vin}/"
                "invitations.",
            )
        services = _services(body.services)
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
        """The vehicle's active grants (and revoked ones with `include_revoked`) of its
        current holding period; for those who manage the vehicle."""
        after = cursor_key("grants", cursor, int)
        vehicle = _managed_vehicle(context, principal, vin)
        grants = context.accounts.list_grants(
            vin=vin,
            tenure=vehicle.tenure,
            include_revoked=include_revoked,
            after_id=after,
            limit=limit + 1,
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
        if grant is None or grant.vin != vin or grant.tenure != vehicle.tenure:
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

    @router.post(
        "/v1/vehicles/{vin}/invitations",
        response_model=InvitationOut,
        status_code=201,
        tags=["provisioning"],
        summary="Invite someone, by e-mail address, to share a vehicle",
    )
    def create_invitation(
        request: Request, vin: str, body: InvitationRequest, principal: Caller, context: Auth
    ) -> InvitationOut:
        """Whoever logs in with `email` (now or after registering) can accept within 7 days
        (POST /v1/invitations/{id}/accept); only then is the vehicle shared with them, for
        `services`. The answer is the same whether the address has an account or not: it
        says nothing about who uses this installation. Limited per user (429 with
        Retry-After beyond 20 an hour, bursts of 10)."""
        vehicle = _managed_vehicle(context, principal, vin)
        if context.invitations is not None:
            wait = context.invitations.acquire(f"user:{principal.user_id}")
            if wait > 0:
                context.record(
                    request,
                    "invitation_create",
                    principal=principal,
                    outcome="denied",
                    account_id=vehicle.account_id,
                    target=f"vehicle:{vin}",
                    detail={"reason": "rate limited"},
                )
                raise too_many(
                    "invitation_rate_limited", "You have sent too many invitations.", wait
                )
        services = _services(body.services)
        now = context.now_ms()
        invitation = context.accounts.create_invitation(
            vin=vin,
            email=body.email,
            services=services,
            invited_by=principal.user_id,
            now=now,
            expires_at=now + context.settings.invitation_ttl_s * 1000,
        )
        context.record(
            request,
            "invitation_create",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"invitation_id": invitation.id, "services": services},
        )
        return InvitationOut.of(invitation, now)

    @router.get(
        "/v1/vehicles/{vin}/invitations",
        response_model=InvitationPage,
        tags=["provisioning"],
        summary="A vehicle's invitations",
    )
    def list_vehicle_invitations(
        vin: str,
        principal: Caller,
        context: Auth,
        limit: Limit = DEFAULT_PAGE,
        cursor: Cursor = None,
    ) -> InvitationPage:
        """The invitations of the vehicle's current holding period, oldest first, with
        their status (pending, accepted, declined, withdrawn, expired); for those who
        manage the vehicle."""
        after = cursor_key("invitations", cursor, int)
        vehicle = _managed_vehicle(context, principal, vin)
        now = context.now_ms()
        invitations = context.accounts.list_invitations(
            vin=vin, tenure=vehicle.tenure, after_id=after, limit=limit + 1
        )
        items, following = _id_page(
            [InvitationOut.of(i, now) for i in invitations], limit, "invitations"
        )
        return InvitationPage(items=items, next=following)

    @router.delete(
        "/v1/vehicles/{vin}/invitations/{invitation_id}",
        response_model=InvitationOut,
        tags=["provisioning"],
        summary="Withdraw an invitation",
    )
    def withdraw_invitation(
        request: Request, vin: str, invitation_id: IdPath, principal: Caller, context: Auth
    ) -> InvitationOut:
        """A pending invitation can no longer be accepted; an answered one is returned as
        it is (revoke the grant it made with DELETE /v1/vehicles/{vin}/grants/{id})."""
        vehicle = _managed_vehicle(context, principal, vin)
        invitation = context.accounts.get_invitation(invitation_id)
        if invitation is None or invitation.vin != vin or invitation.tenure != vehicle.tenure:
            raise _invitation_not_found(invitation_id)
        now = context.now_ms()
        withdrawn = context.accounts.withdraw_invitation(invitation_id, now=now) or invitation
        context.record(
            request,
            "invitation_withdraw",
            principal=principal,
            account_id=vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"invitation_id": invitation_id},
        )
        return InvitationOut.of(withdrawn, now)

    @router.get(
        "/v1/invitations",
        response_model=InvitationPage,
        tags=["auth"],
        summary="Invitations to you",
    )
    def my_invitations(
        principal: Caller, context: Auth, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
    ) -> InvitationPage:
        """Vehicles offered to your e-mail address that you can still accept or decline
        (pending and not expired), oldest first."""
        after = cursor_key("my-invitations", cursor, int)
        now = context.now_ms()
        invitations = context.accounts.list_invitations(
            email=principal.email, status="pending", after_id=after, limit=limit + 1
        )
        offered = [InvitationOut.of(i, now) for i in invitations]
        items, following = _id_page(offered, limit, "my-invitations")
        return InvitationPage(items=[i for i in items if i.status == "pending"], next=following)

    @router.post(
        "/v1/invitations/{invitation_id}/accept",
        response_model=GrantOut,
        status_code=201,
        tags=["auth"],
        summary="Accept an invitation: the vehicle is shared with you",
    )
    def accept_invitation(
        request: Request, invitation_id: IdPath, principal: Caller, context: Auth
    ) -> GrantOut:
        """Makes the grant the invitation offered (replacing one you had of the vehicle).
        409 `invitation_closed` if it was withdrawn, answered or has expired, or the vehicle
        changed hands since."""
        _invitation, grant = _answer(context, request, principal, invitation_id, accept=True)
        assert grant is not None
        return GrantOut.of(grant)

    @router.post(
        "/v1/invitations/{invitation_id}/decline",
        response_model=InvitationOut,
        tags=["auth"],
        summary="Decline an invitation",
    )
    def decline_invitation(
        request: Request, invitation_id: IdPath, principal: Caller, context: Auth
    ) -> InvitationOut:
        """Nothing is shared; the inviter sees `declined`."""
        invitation, _ = _answer(context, request, principal, invitation_id, accept=False)
        return InvitationOut.of(invitation, context.now_ms())

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


def _services(requested: list[Literal["read"] | CommandType]) -> list[str]:
    """The services of a grant or invitation, as stored: sorted, each once."""
    return sorted({str(s) for s in requested})


def _invitation_not_found(invitation_id: int) -> ApiError:
    return ApiError(
        404,
        "invitation_not_found",
        f"No invitation {invitation_id} is visible to you. GET /v1/invitations lists those "
        "to you; GET /v1/vehicles/{vin}/invitations those of a vehicle you manage.",
    )


def _answer(
    context: AuthContext,
    request: Request,
    principal: Principal,
    invitation_id: int,
    *,
    accept: bool,
) -> tuple[InvitationRecord, GrantRecord | None]:
    """Accept or decline an invitation addressed to the caller (else 404)."""
    invitation = context.accounts.get_invitation(invitation_id)
    if invitation is None or invitation.email != normalize_email(principal.email):
        raise _invitation_not_found(invitation_id)
    try:
        answered, grant = context.accounts.answer_invitation(
            invitation_id, user_id=principal.user_id, accept=accept, now=context.now_ms()
        )
    except InvitationClosed as exc:
        raise ApiError(
            409, "invitation_closed", f"Invitation {invitation_id}: {exc.why}."
        ) from None
    vehicle = context.accounts.get_vehicle(invitation.vin)
    context.record(
        request,
        "invitation_accept" if accept else "invitation_decline",
        principal=principal,
        account_id=vehicle.account_id if vehicle is not None else None,
        target=f"vehicle:{invitation.vin}",
        detail={
            "invitation_id": invitation_id,
            **({"grant_id": grant.id} if grant is not None else {}),
        },
    )
    return answered, grant


def _already_held(vin: str, own: bool) -> ApiError:
    if own:
        return ApiError(
            409,
            "vehicle_already_provisioned",
            f"Vehicle {vin} is already provisioned in this account. To give it new "
            f"credentials use POST /v1/vehicles/{vin}/credentials.",
        )
    return ApiError(
        409,
        "vehicle_held_by_another_account",
        f"Vehicle {vin} is held by another account; it can be claimed only after its holder "
        f"revokes it (DELETE /v1/vehicles/{vin}). If the car is yours now, ask its holder or "
        "this installation's operator to release it.",
    )


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
            request,
            "login",
            outcome="failed",
            # what was typed, bounded and with control characters escaped: an audit entry
            # must not become a way to store (or display) anything at all
            detail={"email": for_log(normalize_email(username))},
        )
        raise _bad_login()
    principal = principal_of(user)
    now = context.now_ms()
    # wrong passwords are counted per (user, client address): whoever knows the address
    # elsewhere can slow down only their own attempts, never lock the owner out
    address = client_address(request) or "unknown"
    throttle = context.accounts.login_throttle(user.id, address)
    if throttle is not None and throttle.locked_until is not None and throttle.locked_until > now:
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
            "Too many wrong passwords for this account from your address; wait before the "
            "next attempt.",
            (throttle.locked_until - now) / 1000,
        )
    if (
        not verify_password(password=password, password_hash=user.password_hash)
        or user.disabled_at is not None
    ):
        wrong = user.disabled_at is None
        if wrong:
            context.accounts.record_login_failure(
                user.id, address, now=now, lockout_ms=lambda n: _lockout_ms(context, n)
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
    if throttle is not None:
        context.accounts.record_login_success(user.id, address)
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
    access = _access_token(context, user)
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
