"""Logging in and out, registering, and who you are (tag ``auth``): OAuth 2.0 password
and refresh-token grants (RFC 6749), token revocation (RFC 7009), open registration of
private accounts, ``/v1/me``.

Wrong passwords are throttled per client address and locked out per (user, address), so
nobody elsewhere can lock the owner out (decision 0009); every outcome is audited.
No response or log line contains a password or token except the token response itself
(sent with ``Cache-Control: no-store``, RFC 6749 5.1).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, NoReturn

from fastapi import APIRouter, Depends, Form, Request, Response
from pydantic import ValidationError

from gateway.api.audit import AuditTrail
from gateway.api.deps import Audit, Auth, Caller
from gateway.api.errors import ApiError, invalid_request
from gateway.api.models.accounts import (
    AccountOut,
    GrantOut,
    MeOut,
    RegisterOut,
    RegisterRequest,
    RevokeForm,
    RevokeRequest,
    TokenOut,
    UserOut,
)
from gateway.api.routes.common import ACCOUNT_ERRORS, no_store, password_ok
from gateway.api.security import (
    AuthContext,
    client_address,
    forbidden,
    principal_of,
    too_many,
    unauthenticated,
)
from gateway.auth.passwords import hash_password, needs_rehash, verify_nothing, verify_password
from gateway.auth.tokens import hash_secret, issue_access_token, new_refresh_token
from gateway.core.lockout import lockout_ms
from gateway.core.policy import AccountKind, Role
from gateway.statedb.accounts import DuplicateEmail, UserRecord, normalize_email
from gateway.text import for_log

__all__ = ["authenticate", "router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


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


def _limit_attempts(context: AuthContext, audit: AuditTrail, request: Request) -> None:
    """429 when the client address has made too many password attempts (audited)."""
    if context.logins is None:
        return
    wait = context.logins.acquire(f"addr:{client_address(request)}")
    if wait > 0:
        audit.record("login_throttled", outcome="denied")
        raise too_many("too_many_attempts", "Too many password attempts from your address.", wait)


def _lockout_ms(context: AuthContext, failures: int) -> int | None:
    """The lock-out rule (``gateway.core.lockout``) with this installation's settings."""
    s = context.settings
    return lockout_ms(failures, lockout_after=s.lockout_after, max_lockout_s=s.max_lockout_s)


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


async def _form_encoded(request: Request) -> None:
    """A JSON body would be read as a form without its fields ('grant_type: Field
    required', which a newcomer reading it as a typo in the JSON could not fix): say what
    the endpoint takes instead."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        raise invalid_request(
            ["body"],
            "log in with a form body, not JSON (Content-Type: "
            "application/x-www-form-urlencoded, as OAuth 2.0 prescribes), e.g. curl -d "
            "grant_type=password -d username=you@example.com --data-urlencode password=...",
            "token_body",
        )


@router.post(
    "/v1/auth/token",
    response_model=TokenOut,
    tags=["auth"],
    summary="Log in (OAuth 2.0 password grant) or refresh a token",
    dependencies=[Depends(_form_encoded)],
)
def token(
    request: Request,
    response: Response,
    context: Auth,
    audit: Audit,
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
            raise invalid_request(["body", "refresh_token"], "give the refresh_token", "missing")
        return _refresh(context, audit, refresh_token)
    if not username or password is None:
        raise invalid_request(
            ["body", "username"], "give username (your e-mail) and password", "missing"
        )
    return _login(context, audit, request, username, password)


@router.post(
    "/v1/auth/revoke",
    status_code=204,
    tags=["auth"],
    summary="Log out: revoke a refresh token (and its successors)",
    openapi_extra=_REVOKE_BODY,
)
def revoke(context: Auth, audit: Audit, token: Annotated[str, Depends(_revocation_token)]) -> None:
    """Revokes the refresh token's whole family, so no token from this login can be
    refreshed again. Takes RFC 7009's form body (`token=...&token_type_hint=...`,
    `application/x-www-form-urlencoded`) or JSON `{"refresh_token": "..."}`. Answers
    204 also for an unknown token, and for an access token, which cannot be revoked
    (it expires within minutes), as RFC 7009 allows."""
    record = context.accounts.revoke_refresh_token(hash_secret(token), now=context.now_ms())
    if record is not None:
        user = context.accounts.get_user(record.user_id)
        if user is not None:
            audit.record(
                "logout",
                principal=principal_of(user),
                account_id=user.account_id,
                target=f"user:{user.id}",
            )


@router.post(
    "/v1/auth/register",
    response_model=RegisterOut,
    status_code=202,
    tags=["auth"],
    summary="Register a private account (you become its owner)",
)
def register(request: Request, context: Auth, audit: Audit, body: RegisterRequest) -> RegisterOut:
    """Creates a private account and its owner, unless the e-mail address already has a
    user: then nothing changes. Both answer 202 with the same body, so registration
    cannot be used to find out who uses the installation; the refused attempt is in the
    audit log of the address's account. Log in afterwards with POST /v1/auth/token (it
    fails if the address was taken); add your car with POST /v1/vehicles."""
    if not context.settings.open_registration:
        raise forbidden("Registration is closed here; ask an administrator for an account.")
    _limit_attempts(context, audit, request)
    password_ok(body.password, ["body", "password"])
    # hashed either way: an address that has a user must not answer faster
    password_hash = hash_password(body.password)
    existing = context.accounts.get_user_by_email(body.email)
    if existing is None:
        existing = _new_owner(context, audit, body, password_hash)
    if existing is not None:
        audit.record(
            "register",
            outcome="failed",
            account_id=existing.account_id,
            target=f"user:{existing.id}",
            detail={"error": "email_taken"},
        )
    return RegisterOut()


def _new_owner(
    context: AuthContext, audit: AuditTrail, body: RegisterRequest, password_hash: str
) -> UserRecord | None:
    """A new private account and its owner, audited; or the user who registered the
    address a moment earlier (None when this call created it)."""
    now = context.now_ms()
    account = context.accounts.create_account(AccountKind.PRIVATE, body.name, now=now)
    try:
        user = context.accounts.create_user(
            email=body.email,
            name=body.name,
            password_hash=password_hash,
            role=Role.OWNER,
            account_id=account.id,
            now=now,
        )
    except DuplicateEmail:  # registered between the look-up and the insert
        return context.accounts.get_user_by_email(body.email)
    audit.record(
        "register",
        principal=principal_of(user),
        account_id=account.id,
        target=f"user:{user.id}",
    )
    return None


@router.get("/v1/me", response_model=MeOut, tags=["auth"], summary="Who you are")
def me(principal: Caller, context: Auth) -> MeOut:
    """Your user, your account and the vehicles shared with you (grants)."""
    user = context.accounts.get_user(principal.user_id)
    assert user is not None  # the principal was just loaded
    account = context.accounts.get_account(user.account_id) if user.account_id is not None else None
    grants = context.accounts.list_grants(user_id=user.id)
    return MeOut(
        user=UserOut.model_validate(user),
        account=AccountOut.model_validate(account) if account is not None else None,
        grants=[GrantOut.model_validate(g) for g in grants],
    )


# --- login and refresh ---------------------------------------------------------------------


def _locked(wait_ms: int) -> ApiError:
    return too_many(
        "login_locked",
        "Too many wrong passwords for this account from your address; wait before the "
        "next attempt.",
        wait_ms / 1000,
    )


def _no_such_user(
    context: AuthContext, audit: AuditTrail, email: str, address: str, password: str, now: int
) -> NoReturn:
    """401 for an address without an account, locked out after as many attempts as a
    user's (the same 429), so neither tells whether the account exists (decision 0039)."""
    # what was typed, bounded and with control characters escaped: an audit entry must
    # not become a way to store (or display) anything at all
    detail = {"email": for_log(email)}
    until = context.unknown_logins.locked_until(email, address)
    if until is not None and until > now:
        audit.record("login", outcome="denied", detail={**detail, "reason": "locked"})
        raise _locked(until - now)
    verify_nothing(password)
    context.unknown_logins.record_failure(
        email, address, now=now, lockout_ms=lambda n: _lockout_ms(context, n)
    )
    audit.record("login", outcome="failed", detail=detail)
    raise _bad_login()


def _bad_login() -> ApiError:
    return unauthenticated(
        "invalid_grant", "Wrong e-mail address or password (or the user is disabled)."
    )


def _login(
    context: AuthContext, audit: AuditTrail, request: Request, username: str, password: str
) -> TokenOut:
    user = authenticate(context, audit, request, username, password)
    tokens = _issue_tokens(context, user)
    audit.record("login", principal=principal_of(user), account_id=user.account_id)
    return tokens


def authenticate(
    context: AuthContext, audit: AuditTrail, request: Request, username: str, password: str
) -> UserRecord:
    """The user whose e-mail and password these are, with the throttling and lock-out of
    wrong passwords, each failure audited (the caller audits the success); 401 or 429."""
    _limit_attempts(context, audit, request)
    user = context.accounts.get_user_by_email(username)
    now = context.now_ms()
    # wrong passwords are counted per (user, client address): whoever knows the address
    # elsewhere can slow down only their own attempts, never lock the owner out
    address = client_address(request) or "unknown"
    if user is None:
        _no_such_user(context, audit, normalize_email(username), address, password, now)
    principal = principal_of(user)
    throttle = context.accounts.login_throttle(user.id, address)
    if throttle is not None and throttle.locked_until is not None and throttle.locked_until > now:
        audit.record(
            "login",
            principal=principal,
            outcome="denied",
            account_id=user.account_id,
            detail={"reason": "locked"},
        )
        raise _locked(throttle.locked_until - now)
    if (
        not verify_password(password=password, password_hash=user.password_hash)
        or user.disabled_at is not None
    ):
        wrong = user.disabled_at is None
        # a disabled user's attempts count too: an address that never locked out would
        # tell a disabled account from others (decision 0039)
        context.accounts.record_login_failure(
            user.id, address, now=now, lockout_ms=lambda n: _lockout_ms(context, n)
        )
        audit.record(
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
    return user


def _refresh(context: AuthContext, audit: AuditTrail, refresh_token: str) -> TokenOut:
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
        audit.record("token_refresh", outcome="denied", detail={"reason": outcome})
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
    audit.record("token_refresh", principal=principal_of(user), account_id=user.account_id)
    return TokenOut(
        access_token=access,
        expires_in=s.access_ttl_s,
        refresh_token=new_token,
        refresh_expires_in=s.refresh_ttl_s,
    )
