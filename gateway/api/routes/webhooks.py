"""Webhooks (tag ``notifications``): an organization's receivers of its events, signed
with HMAC-SHA256, their delivery log and a test delivery.

For the account's managers (fleet managers, owners) and administrators; anyone else of the
account gets 403, anyone of another account 404 as for a missing webhook. The secret is
returned once, at creation. A URL must be http(s); private, loopback and link-local
addresses are refused unless the operator allows them
(``NotifySettings.webhook_allow_private_targets``), checked here (an IP literal, and the
addresses a name resolves to now) and again at every delivery (a name may move; a
delivery refused by the check fails at once). An organization has at most
``NotifySettings.max_webhooks_per_account`` (20) webhooks. How a receiver checks a
delivery: docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated

from fastapi import APIRouter, Response
from fastapi import Path as PathParam

from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Caller, CallerAudit, Settings, Webhooks
from gateway.api.errors import ApiError, documented, invalid_request
from gateway.api.models.notify import (
    DeliveryOut,
    DeliveryPage,
    WebhookCreated,
    WebhookOut,
    WebhookPage,
    WebhookRequest,
)
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.common import account_not_found, no_store, target_account
from gateway.api.security import forbidden
from gateway.core.notify import UnacceptableUrl
from gateway.core.policy import Principal, can_manage_account
from gateway.notify.webhooks import check_url_now
from gateway.statedb.webhooks import WebhookLimitReached, WebhookRecord

__all__ = ["router"]

router = APIRouter(tags=["notifications"], responses=documented(403, 404, 409, 422))

WebhookId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Webhook id.")]


def _not_found(webhook_id: int) -> ApiError:
    return ApiError(
        404, "webhook_not_found", f"No webhook {webhook_id} is visible to you. GET /v1/webhooks."
    )


def _managers_only() -> ApiError:
    return forbidden("Webhooks are managed by the organization's managers and administrators.")


def _managed(hooks: Webhooks, principal: Principal, webhook_id: int) -> WebhookRecord:
    hook = hooks.repo.get(webhook_id)
    if hook is None or not (principal.is_admin or hook.account_id == principal.account_id):
        raise _not_found(webhook_id)
    if not can_manage_account(principal, hook.account_id):
        raise _managers_only()
    return hook


@router.post(
    "/v1/webhooks",
    response_model=WebhookCreated,
    status_code=201,
    summary="Add a webhook (its secret is shown once)",
)
def create_webhook(
    principal: Caller,
    body: WebhookRequest,
    hooks: Webhooks,
    context: Auth,
    audit: CallerAudit,
    settings: Settings,
    response: Response,
) -> WebhookCreated:
    """Events of the account are POSTed to `url`, signed (`Telematics-Signature`), retried
    with backoff for about 20 minutes. Keep the returned `secret`: it is not shown again."""
    account_id = target_account(principal, body.account_id, "the webhook")
    if not principal.is_admin and account_id != principal.account_id:
        raise account_not_found(account_id)
    if not can_manage_account(principal, account_id):
        raise _managers_only()
    if context.accounts.get_account(account_id) is None:
        raise account_not_found(account_id)
    try:
        check_url_now(body.url, allow_private=settings.notify.webhook_allow_private_targets)
    except UnacceptableUrl as exc:
        raise invalid_request(["body", "url"], str(exc), "webhook_url", body.url) from None
    limit = settings.notify.max_webhooks_per_account
    try:
        hook = hooks.repo.create(
            limit=limit,
            account_id=account_id,
            url=body.url,
            event_types=sorted(set(body.events)),
            secret="whsec_" + secrets.token_urlsafe(32),
            description=body.description,
            created_by=principal.user_id,
            now=context.now_ms(),
        )
    except WebhookLimitReached:
        raise ApiError(
            409,
            "too_many_webhooks",
            f"Organization {account_id} already has {limit} webhooks, the most it may have; "
            "delete one (DELETE /v1/webhooks/{id}) or let one receive more event types.",
        ) from None
    audit.record(
        "webhook_create",
        account_id=account_id,
        target=f"webhook:{hook.id}",
        detail={"url": hook.url[:200], "events": hook.event_types},
    )
    no_store(response)
    return WebhookCreated(**WebhookOut.model_validate(hook).model_dump(), secret=hook.secret)


@router.get("/v1/webhooks", response_model=WebhookPage, summary="Your organization's webhooks")
def list_webhooks(
    principal: Caller, hooks: Webhooks, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> WebhookPage:
    """Administrators: every webhook; managers: their account's (without secrets)."""
    after = cursor_key("webhooks", cursor, int)
    if not principal.is_admin and not can_manage_account(principal, principal.account_id):
        raise _managers_only()
    records = hooks.repo.page(
        account_id=None if principal.is_admin else principal.account_id,
        after_id=after,
        limit=limit + 1,
    )
    items, following = page_of(
        [WebhookOut.model_validate(r) for r in records],
        limit=limit,
        kind="webhooks",
        key=lambda w: [w.id],
    )
    return WebhookPage(items=items, next=following)


@router.delete("/v1/webhooks/{webhook_id}", status_code=204, summary="Remove a webhook")
def delete_webhook(
    principal: Caller, webhook_id: WebhookId, hooks: Webhooks, audit: CallerAudit
) -> Response:
    """The webhook and its delivery log; nothing more is sent to it."""
    hook = _managed(hooks, principal, webhook_id)
    hooks.repo.delete(webhook_id)
    audit.record("webhook_delete", account_id=hook.account_id, target=f"webhook:{webhook_id}")
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    summary="A webhook's delivery log, newest first",
)
def list_deliveries(
    principal: Caller,
    webhook_id: WebhookId,
    hooks: Webhooks,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> DeliveryPage:
    """Every delivery with its status (`pending`, `delivered`, `failed`: given up), its
    attempts, the last answer's HTTP status or error, and when the next attempt is due."""
    before = cursor_key("deliveries", cursor, int)
    _managed(hooks, principal, webhook_id)
    records = hooks.repo.deliveries(webhook_id, before_id=before, limit=limit + 1)
    items, following = page_of(
        [DeliveryOut.model_validate(r) for r in records],
        limit=limit,
        kind="deliveries",
        key=lambda d: [d.id],
    )
    return DeliveryPage(items=items, next=following)


@router.post(
    "/v1/webhooks/{webhook_id}/test",
    response_model=DeliveryOut,
    status_code=202,
    summary="Send a test delivery",
)
async def test_webhook(
    principal: Caller, webhook_id: WebhookId, hooks: Webhooks, context: Auth
) -> DeliveryOut:
    """Queues a `webhook.test` event to the webhook at once, signed like every delivery;
    its outcome appears in the delivery log within a moment. One at a time: while a test
    delivery is pending (tried or retried), another answers 409 `test_delivery_pending`."""
    await asyncio.to_thread(_managed, hooks, principal, webhook_id)
    delivery = await asyncio.to_thread(
        hooks.repo.enqueue_test_once, webhook_id, now=context.now_ms()
    )
    if delivery is None:
        raise ApiError(
            409,
            "test_delivery_pending",
            f"Webhook {webhook_id} has a test delivery still pending (being tried or retried); "
            "its outcome is in GET /v1/webhooks/{id}/deliveries. Send another once it ended.",
        )
    hooks.worker.poke()
    return DeliveryOut.model_validate(delivery)
