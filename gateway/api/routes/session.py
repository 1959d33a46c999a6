"""The web dashboard's login (tag ``auth``): ``POST /v1/auth/session`` checks the e-mail and
password exactly like the OAuth 2.0 password grant (same throttling, lock-out and audit)
and answers with two cookies instead of tokens in the body; ``DELETE /v1/auth/session``
logs out.

- ``tg_session``: a random session token (``tgs_`` and 256 bits) kept on the server
  (``web_sessions``, only its SHA-256) for ``AuthSettings.session_ttl_s`` (8 h), HttpOnly
  (no script can read it), ``SameSite=Strict``, ``Secure`` unless configured off
  (``AuthSettings.cookie_secure``: ``--no-cookie-secure``, the default only when the API
  listens on loopback; never decided by a request's headers), path ``/``. Every ``/v1``
  route accepts it when no ``Authorization`` header is sent, so the dashboard is just
  another client of this API and sees exactly what its user may see.
- ``tg_csrf``: the session's CSRF token (an HMAC of the session token), readable by the
  dashboard's script, which echoes it in ``X-CSRF-Token`` on every state-changing request;
  one without it is refused with 403 ``csrf_failed`` (``gateway.api.security``).

The login itself must be JSON (a cross-site HTML form cannot send that without the
browser asking first), and a request whose ``Origin`` is another site is refused, so no
other site can log a browser in to an account of its choosing.

Logging out ends the session on the server, not only in the browser: a copied cookie
stops working at once; so does a password change or disabling the user (which end every
session of theirs). A user keeps at most ``MAX_WEB_SESSIONS`` live logins; a further one
ends the oldest (docs/decisions/0019-web-dashboard.md, 0025-web-dashboard-rest.md).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import Audit, Auth, Caller
from gateway.api.models.accounts import UserOut
from gateway.api.routes.auth import authenticate
from gateway.api.routes.common import ACCOUNT_ERRORS, no_store
from gateway.api.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CallerCredential,
    csrf_token,
    forbidden,
    principal_of,
)
from gateway.auth.tokens import hash_secret, is_web_session, new_web_session

__all__ = ["router"]

router = APIRouter(tags=["auth"], responses=ACCOUNT_ERRORS)

#: live dashboard logins per user; one more ends the oldest
MAX_WEB_SESSIONS: Final = 20


class SessionLogin(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=256)


class SessionOut(BaseModel):
    user: UserOut
    csrf_token: str = Field(description="Also in the tg_csrf cookie; send it as X-CSRF-Token.")
    expires_in: int = Field(description="Seconds until the session ends.")


def _same_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` (when the browser sent one) names this host. The
    host, not the scheme: behind a proxy that terminates TLS the API sees http while the
    page's origin is https."""
    origin = request.headers.get("origin")
    if origin is None:  # not sent by every browser for same-origin requests
        return True
    return urlsplit(origin).netloc == request.headers.get("host", request.url.netloc)


@router.post("/v1/auth/session", response_model=SessionOut, summary="Log in to the dashboard")
def log_in(
    request: Request, response: Response, context: Auth, audit: Audit, body: SessionLogin
) -> SessionOut:
    """E-mail and password as JSON; sets the session and CSRF cookies (see the module)."""
    no_store(response)
    if not _same_origin(request):
        raise forbidden("Logging in from another site's page is not allowed.")
    user = authenticate(context, audit, request, body.email, body.password)
    ttl = context.settings.session_ttl_s
    session, session_hash = new_web_session()
    now = context.now_ms()
    context.accounts.create_web_session(
        user.id, session_hash, now=now, expires_at=now + ttl * 1000, keep=MAX_WEB_SESSIONS
    )
    csrf = csrf_token(context.secret, session)
    secure = context.settings.cookie_secure
    response.set_cookie(
        SESSION_COOKIE, session, max_age=ttl, httponly=True, samesite="strict", secure=secure
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=ttl, httponly=False, samesite="strict", secure=secure
    )
    audit.record(
        "login", principal=principal_of(user), account_id=user.account_id, detail={"via": "web"}
    )
    return SessionOut(user=UserOut.model_validate(user), csrf_token=csrf, expires_in=ttl)


@router.delete("/v1/auth/session", status_code=204, summary="Log out of the dashboard")
def log_out(
    principal: Caller, credential: CallerCredential, context: Auth, response: Response
) -> None:
    """Ends the session on the server (a copy of the cookie no longer works) and deletes
    the session and CSRF cookies (needs the CSRF token like any change)."""
    del principal  # authenticated (and CSRF-checked) by the dependency
    if is_web_session(credential):  # an access token or API key is not ended here
        context.accounts.revoke_web_session(hash_secret(credential), now=context.now_ms())
    secure = context.settings.cookie_secure
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=secure)
    response.delete_cookie(CSRF_COOKIE, samesite="strict", secure=secure)
