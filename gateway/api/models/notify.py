"""Request and response models of bulk commands (``routes.command_jobs``) and of webhooks
(``routes.webhooks``); the live stream (``routes.stream``) sends the event JSON of
:func:`gateway.statedb.events.event_body`."""

from __future__ import annotations

from typing import Any, Final, Literal, Self

from pydantic import BaseModel, Field, model_validator

from gateway.api.models import Page
from gateway.api.models.accounts import Id, Name
from gateway.api.models.commands import TtlSeconds
from gateway.api.models.records import FromRecord
from gateway.core.notify import EVENT_TYPES

__all__ = [
    "MAX_JOB_VEHICLES",
    "CommandJobDetail",
    "CommandJobOut",
    "CommandJobPage",
    "CommandJobRequest",
    "DeliveryOut",
    "DeliveryPage",
    "RefusalOut",
    "WebhookCreated",
    "WebhookOut",
    "WebhookPage",
    "WebhookRequest",
]

#: the most vehicles one job may name (the body limit of the route allows them)
MAX_JOB_VEHICLES: Final = 10_000
#: the body limit of POST /v1/command-jobs: 10,000 VINs of 20 bytes each, and room
JOB_BODY_BYTES: Final = 256 * 1024

#: what a webhook may ask for: a type, a family (``command.*``) or everything (``*``)
EventPattern = Literal[
    "*", "command.*", "command_job.*", "alert.*", "trip.*", "command.updated",
    "command_job.created", "command_job.finished", "alert.raised", "alert.updated",
    "alert.ended", "alert.acknowledged", "alert.cleared", "trip.finished", "trip.updated",
    "maintenance.*", "maintenance.due",
]  # fmt: skip
assert set(EVENT_TYPES) <= set(EventPattern.__args__)  # type: ignore[attr-defined]


class CommandJobRequest(BaseModel):
    """Body of ``POST /v1/command-jobs``: one command type for a list of vehicles or a
    fleet (exactly one of ``vins`` and ``fleet_id``)."""

    type: str = Field(description="Command type; GET /v1/command-types lists them.")
    params: dict[str, Any] = Field(default_factory=dict, description="As for one command.")
    vins: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_JOB_VEHICLES,
        description=f"The vehicles, each once (1 to {MAX_JOB_VEHICLES}).",
    )
    fleet_id: Id | None = Field(default=None, description="Every vehicle of this fleet.")
    ttl_s: TtlSeconds | None = Field(
        default=None,
        description="Each command's time to live, whole seconds (at least 1): an offline "
        "vehicle's command waits this long for it to come online (default: the gateway's, "
        "300 s).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.vins is None) == (self.fleet_id is None):
            raise ValueError("give exactly one of 'vins' and 'fleet_id'")
        return self


class RefusalOut(BaseModel):
    vin: str
    #: not_permitted, enterprise_only, vehicle_rate_limited, vehicle_moving,
    #: never_reported, vehicle_revoked
    reason: str
    detail: str | None


class CommandJobOut(FromRecord):
    id: int
    account_id: int | None
    created_by: int
    type: str
    params: dict[str, Any]
    target: dict[str, Any]
    #: vehicles named (commands + refusals)
    total: int
    #: per command status, plus ``refused``: vehicles that got no command
    counts: dict[str, int]
    #: running until its last command ends, then finished
    status: Literal["running", "finished"]
    created_at: int
    created_at_iso: str
    expires_at: int
    expires_at_iso: str
    cancelled_at: int | None
    cancelled_at_iso: str | None
    finished_at: int | None
    finished_at_iso: str | None

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"status": "running" if record.finished_at is None else "finished"}


class CommandJobDetail(CommandJobOut):
    refusals: list[RefusalOut] = Field(
        default_factory=list,
        description="The vehicles that got no command, with the reason (by VIN, the first "
        "1,000; counts.refused has them all).",
    )


class CommandJobPage(Page):
    items: list[CommandJobOut] = Field(description="Newest first.")


def _everything() -> list[EventPattern]:
    return ["*"]


class WebhookRequest(BaseModel):
    """Body of ``POST /v1/webhooks``."""

    url: str = Field(
        max_length=2000,
        description="http or https; private, loopback and link-local addresses only when "
        "the operator allows them.",
        examples=["https://example.com/hooks/telematics"],
    )
    events: list[EventPattern] = Field(
        default_factory=_everything, min_length=1, max_length=20, description="What to send."
    )
    description: Name | None = None
    account_id: Id | None = Field(
        default=None, description="The organization (administrators must name one)."
    )


class WebhookOut(FromRecord):
    id: int
    account_id: int
    url: str
    events: list[str]
    description: str | None
    created_at: int
    created_at_iso: str

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"events": list(record.event_types)}


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="The signing secret, shown this once: verify each delivery's "
        "Telematics-Signature with it (docs/webhooks.md)."
    )


class WebhookPage(Page):
    items: list[WebhookOut]


class DeliveryOut(FromRecord):
    id: int
    webhook_id: int
    event_id: int | None
    event_type: str
    #: pending, delivered or failed (given up)
    status: str
    attempts: int
    created_at: int
    created_at_iso: str
    next_attempt_at: int | None
    next_attempt_at_iso: str | None
    last_attempt_at: int | None
    last_attempt_at_iso: str | None
    response_status: int | None
    error: str | None


class DeliveryPage(Page):
    items: list[DeliveryOut] = Field(description="Newest first.")
