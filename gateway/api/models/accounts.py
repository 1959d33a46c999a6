"""Request and response models of the accounts-and-access routes (``gateway.api.routes``:
auth, api_keys, accounts, users, provisioning, grants, invitations, audit).

Responses about a stored record are :class:`~gateway.api.models.records.FromRecord`
models: ``UserOut.model_validate(user_record)``, not a hand-copied field list.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway.api.bounds import MAX_ID, ONLY_A_NUMBER
from gateway.api.models import Page
from gateway.api.models.records import FromRecord
from gateway.core.policy import AccountKind, Role
from gateway.text import check_plain_text
from schemas.commands import CommandType

__all__ = [
    "AccountOut",
    "AccountPage",
    "AccountRequest",
    "ApiKeyCreated",
    "ApiKeyOut",
    "ApiKeyPage",
    "ApiKeyRequest",
    "AuditOut",
    "AuditPage",
    "GrantOut",
    "GrantPage",
    "GrantRequest",
    "IdPath",
    "InvitationAnswerRequest",
    "InvitationCreated",
    "InvitationOut",
    "InvitationPage",
    "InvitationRequest",
    "MeOut",
    "MqttCredentials",
    "ProvisionedOut",
    "RegisterOut",
    "RegisterRequest",
    "RegistrationOut",
    "RevokeForm",
    "RevokeRequest",
    "TokenOut",
    "UserCreated",
    "UserOut",
    "UserPage",
    "UserRequest",
    "UserUpdate",
    "VehicleRequest",
]


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
Id = Annotated[int, Field(ge=1, le=MAX_ID), ONLY_A_NUMBER]
IdPath = Annotated[int, PathParam(ge=1, le=MAX_ID)]


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


class RegisterOut(BaseModel):
    """The answer to a registration, the same whether or not the address had a user."""

    status: Literal["accepted"] = "accepted"
    message: str = Field(
        default="If this e-mail address had no account, it has one now: log in with "
        "POST /v1/auth/token. If it had one, nothing was changed.",
    )


class AccountOut(FromRecord):
    id: int
    kind: AccountKind
    name: str
    created_at: int
    created_at_iso: str


class AccountPage(Page):
    items: list[AccountOut] = Field(description="Oldest first.")


class AccountRequest(BaseModel):
    kind: AccountKind
    name: Name


class UserOut(FromRecord):
    id: int
    email: str
    name: str
    role: Role
    account_id: int | None
    created_at: int
    created_at_iso: str
    disabled: bool

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"disabled": record.disabled_at is not None}


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


class GrantOut(FromRecord):
    id: int
    vin: str
    user_id: int
    services: list[str]
    granted_by: int | None
    created_at: int
    created_at_iso: str
    revoked_at: int | None
    revoked_at_iso: str | None


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


# validated with ``context={"now": ms}``: a pending invitation past its expiry is answered
# as ``expired`` (no docstring: it would become the schema's description)
class InvitationOut(FromRecord):
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
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        expired = record.status == "pending" and context["now"] >= record.expires_at
        return {"status": "expired"} if expired else {}


class InvitationCreated(InvitationOut):
    accept_token: str = Field(
        description="Shown once: give it to the person invited. An invitation to an address "
        "that has no account yet can be accepted only with it (whoever registers the "
        "address later needs it); one to a registered address is bound to that user."
    )


class InvitationAnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The invitation's accept_token, which its inviter passed on: needed "
        "to accept or decline when the invited address had no account when the invitation "
        "was made.",
    )


class InvitationPage(Page):
    items: list[InvitationOut] = Field(description="Oldest first.")


class MeOut(BaseModel):
    user: UserOut
    account: AccountOut | None
    grants: list[GrantOut]


class ApiKeyOut(FromRecord):
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
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"prefix": f"tgk_{record.prefix}"}


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


class RegistrationOut(FromRecord):
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
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        password = record.mqtt_password_hash is not None
        return {"credentials": "password" if password else "certificate"}


class MqttCredentials(BaseModel):
    url: str | None = Field(description="Where the unit connects.")
    username: str = Field(description="The VIN.")
    password: str | None = Field(description="Shown only in this response.")


class ProvisionedOut(RegistrationOut):
    mqtt: MqttCredentials
    gateway_public_key: str | None = Field(
        description="PEM Ed25519 key the unit verifies signed commands with."
    )


class AuditOut(FromRecord):
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
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"detail": dict(record.detail) if record.detail is not None else None}


class AuditPage(Page):
    items: list[AuditOut] = Field(description="Newest first.")
