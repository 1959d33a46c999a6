"""Authentication and authorization of API requests.

Every route except ``/healthz``, ``/readyz``, the token endpoint, registration and the OpenAPI pages
needs a caller. A caller proves who they are with ``Authorization: Bearer <credential>``,
where the credential is an access token from ``POST /v1/auth/token`` or an API key
(``tgk_...``); ``X-API-Key: tgk_...`` works too, for tools that cannot set a bearer header.

The user is loaded from the state database (one primary-key read, kept for at most a
second by :class:`~gateway.api.authcache.AuthReads`, and dropped at once when this process
changes authentication), so disabling a user or changing their role takes effect on the
next request (within a second when another process made the change) rather than when
their token expires, and an access token issued before the user's password last changed
(its token version is older than the user's) is refused.

Authorization is decided by :mod:`gateway.core.policy`; this module turns its answers into
HTTP: a vehicle or command the caller may not see answers **404**, exactly as if it did not
exist, and an action on something they can see but may not touch answers **403**.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.api.authcache import DEFAULT_AUTH_CACHE_S, AuthReads
from gateway.api.errors import ApiError
from gateway.auth.tokens import (
    InvalidToken,
    TokenExpired,
    api_key_prefix,
    decode_access_token,
    hash_secret,
    is_web_session,
    secrets_match,
)
from gateway.core.policy import NO_ACCESS, Principal, Role, VehicleAccess, vehicle_access
from gateway.core.ratelimit import (
    DEFAULT_INVITATION_LIMIT,
    DEFAULT_LOGIN_LIMIT,
    DEFAULT_REFUSAL_AUDIT_LIMIT,
    DEFAULT_USER_COMMAND_LIMIT,
    DEFAULT_VEHICLE_COMMAND_LIMIT,
    Limit,
    RateLimiter,
)
from gateway.statedb.accounts import AccountRepository, UserRecord, VehicleRecord
from gateway.statedb.audit import AuditLog
from gateway.store import FIRST_TENURE

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "AuthContext",
    "AuthSettings",
    "Caller",
    "auth_context",
    "csrf_token",
    "current_principal",
    "forbidden",
    "readable_data",
    "session_credential",
    "vehicle_not_found",
]

#: how often an API key's ``last_used_at`` is written (a write per request would cost more
#: than the request)
_TOUCH_INTERVAL_MS: Final = 60_000


#: the most users one account may have (security review 5, "left")
DEFAULT_MAX_USERS_PER_ACCOUNT: Final = 10_000


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Authentication settings; the CLI builds them from flags and ``TELEMATICS_*``."""

    #: HS256 key of the access tokens; None: read (or create) ``secret_path``
    secret: bytes | None = None
    #: default: ``auth-secret`` next to the telemetry database
    secret_path: Path | None = None
    access_ttl_s: int = 15 * 60
    refresh_ttl_s: int = 30 * 24 * 3600
    #: remote commands per user and per vehicle (None: unlimited)
    user_command_limit: Limit | None = DEFAULT_USER_COMMAND_LIMIT
    vehicle_command_limit: Limit | None = DEFAULT_VEHICLE_COMMAND_LIMIT
    #: password attempts (logins, registrations) per client address
    login_limit: Limit | None = DEFAULT_LOGIN_LIMIT
    #: invitations to share a vehicle, per inviting user (transfer offers and claims with a
    #: pairing code too, each counted apart)
    invitation_limit: Limit | None = DEFAULT_INVITATION_LIMIT
    #: the most users one account may have, disabled ones included (users are never
    #: deleted); creating one more answers 409 ``too_many_users`` (None: no limit)
    max_users_per_account: int | None = DEFAULT_MAX_USERS_PER_ACCOUNT
    #: refused or failed attempts audited per caller (a user, else a client address); the
    #: ones beyond are counted, and the caller's next entry says how many were left out
    #: (None: every one is written)
    refusal_audit_limit: Limit | None = DEFAULT_REFUSAL_AUDIT_LIMIT
    #: a successful action exactly like one the caller's entry was written for less than
    #: this long ago is counted, not written; the next one written says how many were
    #: (``repeats_before``; None: every one is written; decision 0053)
    repeat_audit_window_s: float | None = 60.0
    #: how long an invitation can be accepted
    invitation_ttl_s: int = 7 * 24 * 3600
    #: consecutive wrong passwords for one user from one client address before that
    #: address must wait; the wait then doubles with each further failure, from 1 s up to
    #: ``max_lockout_s`` (other addresses are not held up)
    lockout_after: int = 5
    max_lockout_s: int = 15 * 60
    #: create the first admin on start when there is no admin yet
    bootstrap_admin: bool = True
    first_admin_email: str = "admin@localhost"
    #: None: generate one and print it once
    first_admin_password: str | None = None
    #: anyone may register a private account (``POST /v1/auth/register``)
    open_registration: bool = True
    #: where units connect, told to each vehicle at provisioning (None: not told)
    broker_url: str | None = None
    #: where units with a client certificate connect (None: ``broker_url``)
    tls_broker_url: str | None = None
    #: the edge brokers' URLs, edge 1 first (decision 0038): a password unit is told its
    #: VIN's edge (:func:`schemas.edges.edge_index`) instead of ``broker_url``
    edge_broker_urls: tuple[str, ...] = ()
    #: the gateway's public command-signing key (PEM), handed out at provisioning
    signing_public_key_path: Path | None = None
    #: how long a web dashboard login (the session cookie) lasts
    session_ttl_s: int = 8 * 3600
    #: the session and CSRF cookies' ``Secure`` flag (decision 0023: configuration, not a
    #: forwarded header); the CLI turns it off by default only on a loopback listener
    cookie_secure: bool = True
    #: how long what authentication reads from the state database is used again, in
    #: seconds (0: read on every request); a change made by another process takes effect
    #: within this time, one made by this process at once (gateway.api.authcache)
    auth_cache_s: float = DEFAULT_AUTH_CACHE_S
    #: wall clock in seconds (tests move it)
    clock: Callable[[], float] = time.time


class UnknownLoginThrottle:
    """Wrong passwords for e-mail addresses that have no account, counted per (address,
    client address) and locked out by the same rule as a user's (``login_throttles``), so
    that the lock-out does not tell whether an account exists (decision 0039). Kept in
    this process's memory, at most ``capacity`` pairs (the least recently failed are
    forgotten first); thread-safe (the login route runs in the thread pool)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._pairs: OrderedDict[tuple[str, str], tuple[int, int | None]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def locked_until(self, email: str, address: str) -> int | None:
        with self._lock:
            entry = self._pairs.get((email, address))
        return None if entry is None else entry[1]

    def record_failure(
        self, email: str, address: str, *, now: int, lockout_ms: Callable[[int], int | None]
    ) -> None:
        with self._lock:
            failures = self._pairs.pop((email, address), (0, None))[0] + 1
            lock = lockout_ms(failures)
            self._pairs[(email, address)] = (failures, None if lock is None else now + lock)
            while len(self._pairs) > self._capacity:
                self._pairs.popitem(last=False)


class RefusalAuditThrottle:
    """How many refused or failed attempts of one caller are written to the audit log
    (security review 5, decision 0042). The log is append-only (decision 0007: every
    refusal is audited), so without a bound one self-registered account sending commands
    to a car it cannot see wrote a row per request, ~80 a second, for good; a rate limit
    answered 429 and audited that too. Beyond ``limit`` an attempt is counted instead, and
    the caller's next entry that is written carries the count (``left_out_before``). Kept
    in this process's memory, at most ``capacity`` callers' counts (the oldest forgotten
    first); thread-safe."""

    def __init__(
        self, limit: Limit, *, clock: Callable[[], float], capacity: int = 100_000
    ) -> None:
        self._limiter = RateLimiter(limit, clock=clock)
        self._left_out: OrderedDict[str, int] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def admit(self, caller: str) -> int | None:
        """None: leave this attempt's entry out (it is counted); else write it, and this
        many of the caller's were left out before it."""
        if self._limiter.acquire(caller) > 0:
            with self._lock:
                self._left_out[caller] = self._left_out.pop(caller, 0) + 1
                while len(self._left_out) > self._capacity:
                    self._left_out.popitem(last=False)
            return None
        with self._lock:
            return self._left_out.pop(caller, 0)


class RepeatAuditCoalescer:
    """Successful actions repeated alike, written once a window (security review 8,
    decision 0053). Refusals are bounded by :class:`RefusalAuditThrottle`; a successful
    action was written every time, so a token refresh loop (13 a second from one
    connection) or the same geofence PUT again and again filled the append-only log for
    good. An entry exactly like one written less than ``window_s`` ago (same caller,
    action, account, target, address, detail and content) is counted instead; the next one
    written alike says how many were (``repeats_before``). Anything that differs is
    written: a fleet manager's bulk work (each vehicle another target) is never held back.

    **Only a repeat of the caller's previous action is counted** (security review 9,
    decision 0061): "add a vehicle to a fleet, remove it, add it again" within the window
    wrote the add and the removal and counted the second add, so the log said the vehicle
    was out of the fleet while it was in (the same for a driver's assignment, a dealer's
    consent, a login after a logout). Now any other action of the caller in between has the
    next one written.

    Kept in this process's memory, at most ``capacity`` entries and callers (the oldest
    forgotten first); thread-safe."""

    def __init__(
        self, window_s: float, *, clock: Callable[[], float], capacity: int = 100_000
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        #: entry -> (when one was last written, how many alike left out since)
        self._written: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        #: caller -> the entry of their latest successful action
        self._latest: OrderedDict[Hashable, Hashable] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def admit(self, caller: Hashable, entry: Hashable) -> int | None:
        """None: leave this entry out (it is counted); else write it, and this many alike
        were left out before it."""
        now = self._clock()
        with self._lock:
            repeat = self._latest.pop(caller, None) == entry
            self._latest[caller] = entry
            if len(self._latest) > self._capacity:
                self._latest.popitem(last=False)
            last = self._written.pop(entry, None)
            if repeat and last is not None and now - last[0] < self._window_s:
                self._written[entry] = (last[0], last[1] + 1)
                return None
            self._written[entry] = (now, 0)
            while len(self._written) > self._capacity:
                self._written.popitem(last=False)
            return 0 if last is None else last[1]


@dataclass(slots=True)
class AuthContext:
    """What the routes need to authenticate, authorize, limit and audit (the log that
    ``gateway.api.audit.AuditTrail`` appends to); one per app."""

    settings: AuthSettings
    secret: bytes
    accounts: AccountRepository
    audit: AuditLog
    user_commands: RateLimiter | None = None
    vehicle_commands: RateLimiter | None = None
    logins: RateLimiter | None = None
    invitations: RateLimiter | None = None
    #: the state-database reads of authentication, kept for ``settings.auth_cache_s``
    reads: AuthReads = field(init=False)
    #: wrong passwords for addresses without an account (see the class)
    unknown_logins: UnknownLoginThrottle = field(default_factory=UnknownLoginThrottle)
    #: refused attempts audited per caller (see the class); None: every one
    refusal_audits: RefusalAuditThrottle | None = field(init=False)
    #: identical successful actions coalesced (see the class); None: every one written
    repeat_audits: RepeatAuditCoalescer | None = field(init=False)
    _touched: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self.reads = AuthReads(self.accounts, s.auth_cache_s)

        def limiter(limit: Limit | None) -> RateLimiter | None:
            return None if limit is None else RateLimiter(limit, clock=s.clock)

        self.user_commands = limiter(s.user_command_limit)
        self.vehicle_commands = limiter(s.vehicle_command_limit)
        self.logins = limiter(s.login_limit)
        self.invitations = limiter(s.invitation_limit)
        self.refusal_audits = (
            None
            if s.refusal_audit_limit is None
            else RefusalAuditThrottle(s.refusal_audit_limit, clock=s.clock)
        )
        self.repeat_audits = (
            None
            if s.repeat_audit_window_s is None
            else RepeatAuditCoalescer(s.repeat_audit_window_s, clock=s.clock)
        )

    def now_ms(self) -> int:
        return int(self.settings.clock() * 1000)

    def now_s(self) -> int:
        return int(self.settings.clock())

    # --- authorization --------------------------------------------------------------------

    def lookup(self, principal: Principal, vin: str) -> tuple[VehicleAccess, VehicleRecord | None]:
        """``principal``'s access to ``vin`` and its registration (None: not provisioned),
        from one read transaction."""
        vehicle, grant = self.accounts.vehicle_access(vin, principal.user_id)
        if vehicle is None and not principal.is_admin:
            return NO_ACCESS, None
        return vehicle_access(principal, vehicle, grant), vehicle

    def lookup_many(
        self, principal: Principal, vins: Sequence[str]
    ) -> dict[str, tuple[VehicleAccess, VehicleRecord | None]]:
        """:meth:`lookup` for many VINs, in a few reads (a bulk command)."""
        found = self.accounts.vehicles_access(vins, principal.user_id)
        answers: dict[str, tuple[VehicleAccess, VehicleRecord | None]] = {}
        for vin in vins:
            vehicle, grant = found.get(vin, (None, None))
            if vehicle is None and not principal.is_admin:
                answers[vin] = (NO_ACCESS, None)
            else:
                answers[vin] = (vehicle_access(principal, vehicle, grant), vehicle)
        return answers

    def visible_vins(self, principal: Principal) -> dict[str, int] | None:
        """The VINs whose data ``principal`` may read, each with the holding period to
        read (vin -> tenure); None: all, each at its newest (an admin)."""
        if principal.is_admin:
            return None
        return self.accounts.visible_vins(
            account_id=principal.account_id,
            user_id=principal.user_id,
            include_account=principal.role is not Role.DRIVER,
        )

    # --- API keys -------------------------------------------------------------------------

    def touch_api_key(self, key_id: int) -> None:
        now = self.now_ms()
        if now - self._touched.get(key_id, 0) >= _TOUCH_INTERVAL_MS:
            self._touched[key_id] = now
            self.accounts.touch_api_key(key_id, now=now)


def client_address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def context_of(request: Request) -> AuthContext:
    context: AuthContext = request.app.state.auth
    return context


async def auth_context(request: Request) -> AuthContext:
    """A coroutine, like every dependency that only hands out what the app holds: FastAPI
    runs a plain function dependency on the thread pool, a hop to another thread and back
    for each request, which costs more than the function (decision 0035)."""
    return context_of(request)


# --- errors --------------------------------------------------------------------------------


def unauthenticated(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def vehicle_not_found(vin: str) -> ApiError:
    """The answer for a vehicle that does not exist *or* that the caller may not see."""
    return ApiError(
        404,
        "vehicle_not_found",
        f"No vehicle with VIN {vin} is visible to you. Check the VIN; GET /v1/vehicles lists "
        "the vehicles you can see.",
    )


def too_many(code: str, message: str, retry_after_s: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after_s))
    return ApiError(
        429,
        code,
        f"{message} Retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


# --- the caller ----------------------------------------------------------------------------

_bearer = HTTPBearer(
    auto_error=False,
    description="An access token from POST /v1/auth/token, or an API key (tgk_...).",
)
_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="An API key (tgk_...)."
)


def principal_of(user: UserRecord, *, via: str = "token", prefix: str | None = None) -> Principal:
    return Principal(
        user_id=user.id,
        email=user.email,
        role=Role(user.role),
        account_id=user.account_id,
        via=via,
        api_key_prefix=prefix,
    )


async def current_principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """The authenticated caller, or 401 with a message that says what to send.

    A coroutine on purpose: its database reads (a user by primary key, an API key by
    prefix), when not kept from a moment ago (:class:`~gateway.api.authcache.AuthReads`),
    take a fraction of a millisecond, less than handing them to the thread pool and back,
    which measured as 5 ms more at the median per command under load."""
    context = context_of(request)
    credential = _credential_of(request, context, bearer, api_key)
    return authenticate(context, credential)


def _credential_of(
    request: Request,
    context: AuthContext,
    bearer: HTTPAuthorizationCredentials | None,
    api_key: str | None,
) -> str:
    credential = bearer.credentials if bearer is not None else api_key
    if not credential:
        credential = session_credential(request, context.secret)
    if not credential:
        raise unauthenticated(
            "not_authenticated",
            "This endpoint needs a caller: send 'Authorization: Bearer <token>' with an "
            "access token from POST /v1/auth/token (or an API key).",
        )
    return credential


async def caller_credential(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> str:
    """The credential the caller sent (token, API key or session), for a long-lived
    response (a live stream) to check again later with :func:`still_authenticated`."""
    return _credential_of(request, context_of(request), bearer, api_key)


def still_authenticated(context: AuthContext, credential: str, principal: Principal) -> bool:
    """Is ``credential`` still good for ``principal`` (not expired, not ended by a password
    change or a disabled user, the API key not revoked, the same role and account)? Live
    streams ask this every 30 s, so a stolen token's stream ends with the token."""
    try:
        now = authenticate(context, credential)
    except ApiError:
        return False
    return (now.user_id, now.role, now.account_id) == (
        principal.user_id,
        principal.role,
        principal.account_id,
    )


def authenticate(context: AuthContext, credential: str) -> Principal:
    """The principal of an access token, API key or dashboard session, or 401 saying
    what is wrong."""
    prefix = api_key_prefix(credential)
    if prefix is not None:
        return _api_key_principal(context, credential, prefix)
    if is_web_session(credential):
        return _web_session_principal(context, credential)
    try:
        claims = decode_access_token(context.secret, credential, now=context.now_s())
    except TokenExpired:
        raise unauthenticated(
            "token_expired",
            "The access token has expired: get a new one from POST /v1/auth/token with "
            "grant_type=refresh_token.",
        ) from None
    except InvalidToken:
        raise unauthenticated(
            "invalid_token",
            "The access token or API key is not valid. Log in again (POST /v1/auth/token).",
        ) from None
    user = context.reads.user(claims.user_id)
    if user is None or user.disabled_at is not None:
        raise unauthenticated(
            "invalid_token", "The user of this token no longer exists or is disabled."
        )
    if claims.token_version < user.token_version:
        raise unauthenticated(
            "invalid_token",
            "This access token was ended when the user's password was changed or the user "
            "was disabled. Log in again (POST /v1/auth/token).",
        )
    return principal_of(user)


# --- the web dashboard's session cookie -----------------------------------------------------

#: the session cookie: an access token, HttpOnly (scripts cannot read it)
SESSION_COOKIE: Final = "tg_session"
#: the CSRF token cookie, readable by the dashboard's script, which echoes it in
#: ``X-CSRF-Token`` on every state-changing request
CSRF_COOKIE: Final = "tg_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(secret: bytes, session: str) -> str:
    """The CSRF token of a session: an HMAC of the session token, so a token planted by
    someone who can set cookies but not read this session's cannot match it."""
    digest = hmac.new(secret, b"csrf\0" + session.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def session_credential(request: Request, secret: bytes) -> str | None:
    """The session cookie's access token when the request carries one (and no other
    credential), after the CSRF check: a state-changing request made with the cookie must
    echo the session's CSRF token in ``X-CSRF-Token`` (403 ``csrf_failed`` otherwise). A
    cross-site page can make the browser send the cookie (where SameSite does not stop it)
    but can neither read the token nor set a custom header without CORS, which this API
    never grants."""
    session = request.cookies.get(SESSION_COOKIE)
    if not session:
        return None
    if request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token(secret, session).encode()):
            raise ApiError(
                403,
                "csrf_failed",
                "This request was made with the dashboard's session cookie but without its "
                f"CSRF token in the {CSRF_HEADER} header, so it may come from another site; "
                "it was refused. Reload the page (or send an Authorization header instead).",
            )
    return session


def _web_session_principal(context: AuthContext, session: str) -> Principal:
    """The user of a live dashboard session: one kept on the server, so logging out, a
    password change or disabling the user ends it for whoever holds a copy of the cookie."""
    found = context.reads.web_session(hash_secret(session))
    user = found[0] if found is not None and found[1] > context.now_ms() else None
    if user is None or user.disabled_at is not None:
        raise unauthenticated(
            "session_ended",
            "This dashboard session has ended (logged out, expired, or ended by a password "
            "change): log in again.",
        )
    return principal_of(user, via="session")


def _api_key_principal(context: AuthContext, key: str, prefix: str) -> Principal:
    found = context.reads.api_key(prefix)
    if found is None or not secrets_match(key, found[0].key_hash):
        raise unauthenticated("invalid_api_key", "The API key is not valid.")
    record, user = found
    if record.revoked_at is not None:
        raise unauthenticated("invalid_api_key", "The API key has been revoked; create a new one.")
    if user.disabled_at is not None:
        raise unauthenticated("invalid_api_key", "The API key's user is disabled.")
    context.touch_api_key(record.id)
    return principal_of(user, via="api_key", prefix=prefix)


Caller = Annotated[Principal, Depends(current_principal)]
CallerCredential = Annotated[str, Depends(caller_credential)]
Auth = Annotated[AuthContext, Depends(auth_context)]


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise forbidden(f"{what} is for administrators only.")


def readable_data(
    context: AuthContext, principal: Principal, vin: str
) -> tuple[int, VehicleRecord | None]:
    """The holding period (tenure) of ``vin`` whose data the caller reads, and the
    vehicle's registration (None: not provisioned). The period is its current one (the
    last one of a revoked vehicle, for an admin; the first for a VIN that reports without
    being provisioned, which only an admin sees). 404 unless the caller may see the
    vehicle, 403 if they see it but their grant does not include ``read``."""
    access, vehicle = context.lookup(principal, vin)
    if not access.read:
        raise vehicle_not_found(vin)
    if not access.read_data:
        raise forbidden(
            f"Vehicle {vin} was shared with you for remote services only, not to read its "
            "state and history (the grant's services do not include 'read')."
        )
    return (vehicle.tenure if vehicle is not None else FIRST_TENURE), vehicle


def check_command_limits(context: AuthContext, principal: Principal, vin: str) -> None:
    """429 with Retry-After when the vehicle or the caller has sent too many commands.

    Each bucket is charged only when the command goes through: the vehicle's token is given
    back when the caller's own limit refuses it. Called on the event loop without an
    ``await`` in between, so no other request of this process interleaves.
    """
    vehicles, users = context.vehicle_commands, context.user_commands
    vehicle_key, user_key = f"vehicle:{vin}", f"user:{principal.user_id}"
    if vehicles is not None:
        wait = vehicles.acquire(vehicle_key)
        if wait > 0:
            raise too_many(
                "vehicle_rate_limited",
                f"Vehicle {vin} has been sent too many commands (limit {vehicles.limit}).",
                wait,
            )
    if users is not None:
        wait = users.acquire(user_key)
        if wait > 0:
            if vehicles is not None:
                vehicles.refund(vehicle_key)
            raise too_many(
                "user_rate_limited",
                f"You have sent too many commands (limit {users.limit}).",
                wait,
            )
