"""Request and response models of the vehicle lifecycle routes
(``gateway.api.routes.lifecycle``): registration and pairing codes, claims, service,
decommissioning, the history, and ownership transfers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from gateway.api.bounds import MAX_ID, ONLY_A_NUMBER
from gateway.api.models import Page
from gateway.api.models.accounts import Email, ProvisionedOut
from gateway.api.models.records import FromRecord
from gateway.api.params import MAX_TIMESTAMP_MS
from gateway.text import check_plain_text

__all__ = [
    "ClaimRequest",
    "DecommissionRequest",
    "LifecycleEventOut",
    "LifecycleHistory",
    "LifecycleOut",
    "PairingCodeOut",
    "ServiceRequest",
    "TransferAcceptRequest",
    "TransferAccepted",
    "TransferDeclineRequest",
    "TransferOffered",
    "TransferOut",
    "TransferPage",
    "TransferRequest",
]


def _plain(value: str) -> str:
    return check_plain_text(value, "the text")


Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_plain)]
Label = Annotated[str, Field(max_length=200), AfterValidator(_plain)]
Id = Annotated[int, Field(ge=1, le=MAX_ID), ONLY_A_NUMBER]
Credentials = Literal["password", "certificate"]
_CREDENTIALS_DOC = (
    "'password': a random MQTT password, returned once; 'certificate': the "
    "unit authenticates with a client certificate whose common name is the VIN."
)

State = Literal["unregistered", "built", "active", "in_service", "decommissioned"]


class LifecycleOut(FromRecord):
    vin: str
    state: State
    account_id: int | None = Field(description="The holder (null: nobody holds it).")
    tenure: int | None = Field(description="The current (or last) holding period.")
    registered_at: int | None
    registered_at_iso: str | None
    pairing_code_open: bool = Field(description="A pairing code was issued and not used yet.")
    pairing_locked_until: int | None = Field(
        description="Too many wrong codes: no claim is looked at before this time."
    )
    pairing_locked_until_iso: str | None
    service_account_id: int | None
    service_until: int | None
    service_until_iso: str | None
    decommissioned_at: int | None
    decommissioned_at_iso: str | None


class PairingCodeOut(LifecycleOut):
    pairing_code: str = Field(
        description="Shown only in this response: hand it over with the car (or flash it "
        "into the unit, which shows it). It claims the car once."
    )


class LifecycleEventOut(FromRecord):
    id: int
    vin: str
    at: int
    at_iso: str
    event: str
    from_state: str
    to_state: str
    actor_user_id: int | None
    account_id: int | None
    tenure: int | None
    reason: str | None
    detail: dict[str, Any] | None


class LifecycleHistory(LifecycleOut):
    history: list[LifecycleEventOut] = Field(description="Every change, oldest first.")


class ClaimRequest(BaseModel):
    code: str = Field(min_length=1, max_length=64, description="The car's pairing code.")
    account_id: Id | None = Field(
        default=None, description="Default: your own account (required for admins)."
    )
    label: Label | None = None
    credentials: Credentials = Field(default="password", description=_CREDENTIALS_DOC)


class ServiceRequest(BaseModel):
    workshop_account_id: Id = Field(description="The workshop's account.")
    until: Annotated[int, ONLY_A_NUMBER] = Field(
        ge=0,
        le=MAX_TIMESTAMP_MS,
        description="When the workshop's access ends (epoch ms, in the future, at most "
        "9999-12-31T23:59:59.999Z).",
    )
    reason: Reason | None = None


class DecommissionRequest(BaseModel):
    reason: Reason = Field(description="Why, for the history (scrapped, written off ...).")


class TransferRequest(BaseModel):
    to_email: Email = Field(description="Whoever logs in with this address may accept.")
    note: Reason | None = None
    expires_in_s: Annotated[int, ONLY_A_NUMBER] = Field(
        default=7 * 24 * 3600, ge=60, le=90 * 24 * 3600, description="How long it stays open."
    )


class TransferAcceptRequest(BaseModel):
    account_id: Id | None = Field(
        default=None, description="The account the car goes to; default: your own."
    )
    label: Label | None = None
    credentials: Credentials = Field(default="password", description=_CREDENTIALS_DOC)
    claim_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The one-time token the offerer was given (POST /v1/vehicles/{vin}/"
        "transfers) and passed on: needed when the offer's address had no account when it "
        "was made.",
    )


class TransferDeclineRequest(BaseModel):
    claim_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The offer's claim_token: needed when the offer's address had no "
        "account when it was made.",
    )


# validated with ``context={"now": ms}``: a pending transfer past its expiry is answered as
# ``expired`` (no docstring: it would become the schema's description)
class TransferOut(FromRecord):
    id: int
    vin: str
    from_account_id: int
    to_email: str
    to_account_id: int | None
    note: str | None
    status: Literal["pending", "accepted", "declined", "cancelled", "withdrawn", "expired"]
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


class TransferOffered(TransferOut):
    claim_token: str = Field(
        description="Shown once: give it to the buyer with the transfer's id. An offer to an "
        "address that has no account yet can be accepted only with it (whoever registers "
        "the address later needs it); an offer to a registered address is bound to that "
        "user."
    )


class TransferPage(Page):
    items: list[TransferOut] = Field(description="Newest first.")


class TransferAccepted(BaseModel):
    transfer: TransferOut
    vehicle: ProvisionedOut = Field(
        description="The car in your account, in a new holding period, with new "
        "credentials for its unit (the old ones stopped working)."
    )
