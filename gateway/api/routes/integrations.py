"""Integration credentials (tag ``notifications``): MQTT log-ins for an organization's
integrations (home-automation tools and the like) that may read the organization's alerts
on ``integrations/<account id>/alerts`` and do nothing else on the broker (decision 0017).

Created, listed and deleted by administrators and the organization's fleet managers;
anyone else of the organization gets 403, anyone of another organization 404 as for a
missing credential. The password is returned once, at creation; the broker accepts the
credential within a second (the broker sync), and forgets it (disconnecting it) within a
second of its deletion.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Caller, CallerAudit, Integrations, Settings
from gateway.api.errors import ApiError, documented
from gateway.api.models import Page
from gateway.api.models.accounts import Id, Name
from gateway.api.models.records import FromRecord
from gateway.api.paging import DEFAULT_PAGE, Cursor, Limit, cursor_key, page_of
from gateway.api.routes.common import account_not_found, no_store, target_account
from gateway.api.security import forbidden
from gateway.broker.auth import generate_password, hash_password, integration_topic
from gateway.core.policy import Principal, Role
from gateway.statedb.integrations import IntegrationRecord, IntegrationRepository

__all__ = ["router"]

router = APIRouter(tags=["notifications"], responses=documented(403, 404, 409, 422))

IntegrationId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="Credential id.")]


class IntegrationRequest(BaseModel):
    """Body of ``POST /v1/integrations``."""

    description: Name | None = Field(default=None, examples=["Home Assistant at the depot"])
    account_id: Id | None = Field(
        default=None, description="The organization (administrators must name one)."
    )


class IntegrationOut(FromRecord):
    id: int
    account_id: int
    #: the MQTT user name and client id
    username: str
    #: the one topic it may subscribe to
    topic: str
    description: str | None
    created_at: int
    created_at_iso: str

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"username": record.username, "topic": integration_topic(record.account_id)}


class IntegrationCreated(IntegrationOut):
    password: str = Field(description="The MQTT password, shown this once.")


class IntegrationPage(Page):
    items: list[IntegrationOut]


def _may_manage(principal: Principal, account_id: int | None) -> bool:
    return principal.is_admin or (
        principal.role == Role.FLEET_MANAGER and principal.account_id == account_id
    )


def _not_found(credential_id: int) -> ApiError:
    return ApiError(
        404,
        "integration_not_found",
        f"No integration credential {credential_id} is visible to you. GET /v1/integrations.",
    )


def _managers_only() -> ApiError:
    return forbidden("Integration credentials are managed by the organization's fleet managers.")


def _managed(repo: IntegrationRepository, principal: Principal, cid: int) -> IntegrationRecord:
    found = repo.get(cid)
    if found is None or not (principal.is_admin or found.account_id == principal.account_id):
        raise _not_found(cid)
    if not _may_manage(principal, found.account_id):
        raise _managers_only()
    return found


@router.post(
    "/v1/integrations",
    response_model=IntegrationCreated,
    status_code=201,
    summary="Add an MQTT integration credential (its password is shown once)",
)
def create_integration(
    principal: Caller,
    body: IntegrationRequest,
    repo: Integrations,
    context: Auth,
    audit: CallerAudit,
    settings: Settings,
    response: Response,
) -> IntegrationCreated:
    """A user name and password for the broker that may subscribe to your organization's
    alert topic (`topic` in the answer) and nothing else: no other topic, no wildcard, no
    shared subscription, no publishing. Keep the `password`: it is not shown again."""
    account_id = target_account(principal, body.account_id, "the credential")
    if not principal.is_admin and account_id != principal.account_id:
        raise account_not_found(account_id)
    if not _may_manage(principal, account_id):
        raise _managers_only()
    if context.accounts.get_account(account_id) is None:
        raise account_not_found(account_id)
    password = generate_password()
    limit = settings.notify.max_integrations_per_account
    made = repo.create(
        account_id=account_id,
        password_hash=hash_password(password),
        description=body.description,
        created_by=principal.user_id,
        now=context.now_ms(),
        limit=limit,
    )
    if made is None:
        raise ApiError(
            409,
            "too_many_integrations",
            f"Organization {account_id} already has {limit} integration credentials, the "
            "most it may have; delete one (DELETE /v1/integrations/{id}) first.",
        )
    audit.record("integration_create", account_id=account_id, target=f"integration:{made.id}")
    no_store(response)
    return IntegrationCreated(**IntegrationOut.model_validate(made).model_dump(), password=password)


@router.get("/v1/integrations", response_model=IntegrationPage, summary="Integration credentials")
def list_integrations(
    principal: Caller, repo: Integrations, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None
) -> IntegrationPage:
    """Administrators: every one; fleet managers: their organization's (no passwords)."""
    after = cursor_key("integrations", cursor, int)
    if not principal.is_admin and not _may_manage(principal, principal.account_id):
        raise _managers_only()
    records = repo.page(
        account_id=None if principal.is_admin else principal.account_id,
        after_id=after,
        limit=limit + 1,
    )
    items, following = page_of(
        [IntegrationOut.model_validate(r) for r in records],
        limit=limit,
        kind="integrations",
        key=lambda i: [i.id],
    )
    return IntegrationPage(items=items, next=following)


@router.delete(
    "/v1/integrations/{credential_id}", status_code=204, summary="Remove an integration credential"
)
def delete_integration(
    principal: Caller, credential_id: IntegrationId, repo: Integrations, audit: CallerAudit
) -> Response:
    """The broker disconnects it and refuses it from the next sync on (within a second)."""
    found = _managed(repo, principal, credential_id)
    repo.delete(credential_id)
    audit.record(
        "integration_delete", account_id=found.account_id, target=f"integration:{credential_id}"
    )
    return Response(status_code=204)
