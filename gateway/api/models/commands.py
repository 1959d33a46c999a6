"""Request and response models of the remote-command routes (``gateway.api.routes.commands``).

Commands and their transitions are answered with
:class:`~gateway.api.models.records.FromRecord` models built from the state database's
records (``CommandOut.model_validate(record)``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BaseModel, Field

from gateway.api.bounds import ONLY_A_NUMBER
from gateway.api.models import Page
from gateway.api.models.records import FromRecord
from gateway.core.lifecycle import is_terminal
from gateway.statedb.commands import CommandRecord, TransitionRecord

__all__ = [
    "MAX_TTL_S",
    "MIN_TTL_S",
    "CommandDetail",
    "CommandOut",
    "CommandPage",
    "CommandRequest",
    "CommandTypeOut",
    "CommandTypePage",
    "TransitionOut",
    "TtlSeconds",
    "command_detail",
]

#: the schema's bound of ``ttl_s`` (a year); the gateway's own maximum (CommandSettings,
#: 24 h by default) is checked against the request as well
MAX_TTL_S: Final = 365 * 24 * 3600
#: the shortest time to live: a command must at least be able to reach a unit (a TTL of
#: 1e-300 s was accepted and stored as 0 ms, so the command expired as it was created)
MIN_TTL_S: Final = 1


#: a time to live in whole seconds: 1 s to a year (the gateway's own maximum, 24 h by
#: default, is checked by the route); a fraction (``1.5``) is refused rather than rounded,
#: ``60.0`` is taken as 60
TtlSeconds = Annotated[int, Field(ge=MIN_TTL_S, le=MAX_TTL_S), ONLY_A_NUMBER]


class CommandRequest(BaseModel):
    """Body of ``POST /v1/vehicles/{vin}/commands``."""

    type: str = Field(description="Command type; GET /v1/command-types lists them.")
    params: dict[str, Any] = Field(
        default_factory=dict, description='Parameters of the type, e.g. {"percent": 80}.'
    )
    ttl_s: TtlSeconds | None = Field(
        default=None,
        description="Time to live in whole seconds (at least 1): the command is never "
        "started after it (default: the gateway's, 300 s; at most the gateway's maximum).",
    )


class TransitionOut(FromRecord):
    seq: int
    status: str
    event: str | None
    at: int
    at_iso: str
    reason: str | None
    detail: str | None

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {"status": record.status.value}


class CommandOut(FromRecord):
    """A command as lists and creation answer it; GET /v1/commands/{id} adds its
    transitions (:class:`CommandDetail`)."""

    id: str
    vin: str
    type: str
    params: dict[str, Any]
    status: str
    terminal: bool
    reason: str | None
    detail: str | None
    idempotency_key: str | None
    created_at: int
    created_at_iso: str
    expires_at: int
    expires_at_iso: str
    sent_at: int | None
    sent_at_iso: str | None
    accepted_at: int | None
    accepted_at_iso: str | None
    finished_at: int | None
    finished_at_iso: str | None
    #: pending, confirmed, unconfirmed or not_applicable
    confirmation: str
    confirmed_at: int | None
    confirmed_at_iso: str | None

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": record.status.value,
            "terminal": is_terminal(record.status),
            "params": dict(record.params),
        }


class CommandDetail(CommandOut):
    transitions: list[TransitionOut] = Field(description="Every status change, oldest first.")


class CommandPage(Page):
    items: list[CommandOut] = Field(description="Newest first.")


class CommandTypeOut(BaseModel):
    type: str
    description: str
    enterprise_only: bool
    unsafe_while_moving: bool
    params_schema: dict[str, Any]
    confirmed_by: list[str]


class CommandTypePage(Page):
    items: list[CommandTypeOut] = Field(description="Every command type; always one page.")


def command_detail(record: CommandRecord, transitions: list[TransitionRecord]) -> CommandDetail:
    return CommandDetail(
        **CommandOut.model_validate(record).model_dump(),
        transitions=[TransitionOut.model_validate(t) for t in transitions],
    )
