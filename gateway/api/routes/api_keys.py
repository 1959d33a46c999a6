"""API keys for integrations (tag ``auth``; a user's keys: ``accounts``): create yours,
list and revoke yours or those of a user you manage. A key is shown only in the response
that creates it; only its hash is stored (decision 0007). Creating keys uses the caller's
invitation limit, in a bucket of its own (administrators are not limited): every key is a
row kept for good, revoked or not (decision 0039)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.api.deps import Auth, Caller, CallerAudit
from gateway.api.errors import ApiError, documented
from gateway.api.models.accounts import ApiKeyCreated, ApiKeyOut, ApiKeyPage, ApiKeyRequest, IdPath
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import (
    ACCOUNT_ERRORS,
    id_page,
    managed_user_or_self,
    no_store,
    user_not_found,
)
from gateway.api.security import too_many
from gateway.auth.tokens import new_api_key

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.post(
    "/v1/api-keys",
    response_model=ApiKeyCreated,
    status_code=201,
    tags=["auth"],
    summary="Create an API key for an integration",
    responses=documented(429),
)
def create_api_key(
    response: Response, principal: Caller, context: Auth, audit: CallerAudit, body: ApiKeyRequest
) -> ApiKeyCreated:
    """The key acts as you, with your rights; it is shown only in this response (only
    a hash is stored). Send it as `Authorization: Bearer tgk_...` or `X-API-Key`. It ends
    when you revoke it, when your password is changed or reset, and when you are
    disabled. Keys are created at a bounded rate per user (429 `api_key_rate_limited`)."""
    no_store(response)
    if not principal.is_admin and context.invitations is not None:
        wait = context.invitations.acquire(f"api_key_create:user:{principal.user_id}")
        if wait > 0:
            audit.record("api_key_create", outcome="denied", account_id=principal.account_id,
                         detail={"reason": "rate limited"})  # fmt: skip
            raise too_many("api_key_rate_limited", "You created too many API keys.", wait)
    key, prefix, key_hash = new_api_key()
    record = context.accounts.create_api_key(
        user_id=principal.user_id,
        name=body.name,
        prefix=prefix,
        key_hash=key_hash,
        now=context.now_ms(),
    )
    audit.record(
        "api_key_create",
        account_id=principal.account_id,
        target=f"api_key:{record.id}",
        detail={"name": body.name, "prefix": f"tgk_{prefix}"},
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(record).model_dump(), key=key)


@router.get("/v1/api-keys", response_model=ApiKeyPage, tags=["auth"], summary="Your API keys")
def list_api_keys(
    principal: Caller, context: Auth, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> ApiKeyPage:
    """Your keys, revoked ones included; never the keys themselves."""
    after = cursor_key("api-keys", cursor, int)
    keys = context.accounts.list_api_keys(principal.user_id, after_id=after, limit=limit + 1)
    items, following = id_page([ApiKeyOut.model_validate(k) for k in keys], limit, "api-keys")
    return ApiKeyPage(items=items, next=following)


@router.delete(
    "/v1/api-keys/{key_id}",
    response_model=ApiKeyOut,
    tags=["auth"],
    summary="Revoke an API key",
)
def revoke_api_key(
    principal: Caller, context: Auth, audit: CallerAudit, key_id: IdPath
) -> ApiKeyOut:
    """Your own key, or one of a user you manage (owners: their drivers'; fleet
    managers: their organization's users'; administrators: anyone's). Effective
    immediately."""
    record = context.accounts.get_api_key(key_id)
    owner = None if record is None else managed_user_or_self(context, principal, record.user_id)
    if record is None or owner is None:
        raise ApiError(
            404, "api_key_not_found", f"No API key {key_id}. GET /v1/api-keys lists yours."
        )
    revoked = context.accounts.revoke_api_key(key_id, now=context.now_ms()) or record
    audit.record(
        "api_key_revoke",
        account_id=owner.account_id,
        target=f"api_key:{key_id}",
        detail={"prefix": f"tgk_{record.prefix}", "user_id": record.user_id},
    )
    return ApiKeyOut.model_validate(revoked)


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
    user = managed_user_or_self(context, principal, user_id)
    if user is None:
        raise user_not_found(user_id)
    keys = context.accounts.list_api_keys(user.id, after_id=after, limit=limit + 1)
    items, following = id_page([ApiKeyOut.model_validate(k) for k in keys], limit, "user-api-keys")
    return ApiKeyPage(items=items, next=following)
