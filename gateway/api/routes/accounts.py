"""Accounts (tag ``accounts``): an enterprise customer's organization or a private
account; administrators create them, everybody reads their own."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import Auth, Caller, CallerAudit
from gateway.api.models.accounts import AccountOut, AccountPage, AccountRequest, IdPath
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key
from gateway.api.routes.common import ACCOUNT_ERRORS, account_not_found, id_page
from gateway.api.security import forbidden

__all__ = ["router"]

router = APIRouter(responses=ACCOUNT_ERRORS)


@router.post(
    "/v1/accounts",
    response_model=AccountOut,
    status_code=201,
    tags=["accounts"],
    summary="Create an account (organization or private); administrators",
)
def create_account(
    principal: Caller, context: Auth, audit: CallerAudit, body: AccountRequest
) -> AccountOut:
    """An enterprise customer's organization, or a private account. Then add its
    users with POST /v1/users."""
    if not principal.is_admin:
        raise forbidden("Creating accounts is for administrators.")
    account = context.accounts.create_account(body.kind, body.name, now=context.now_ms())
    audit.record(
        "account_create",
        account_id=account.id,
        target=f"account:{account.id}",
        detail={"kind": body.kind.value, "name": body.name},
    )
    return AccountOut.model_validate(account)


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
    items, following = id_page([AccountOut.model_validate(a) for a in accounts], limit, "accounts")
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
        raise account_not_found(account_id)
    account = context.accounts.get_account(account_id)
    if account is None:
        raise account_not_found(account_id)
    return AccountOut.model_validate(account)
