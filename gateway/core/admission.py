"""Command admission: whether a person's request becomes a command, and with what.

:func:`check_request` and :func:`admit` are the decisions the command service
(``gateway.commands.service``) asks before it stores anything: the type must be known and
the parameters valid (checked first, before the vehicle's state is read), the vehicle must
have reported to the gateway, and a command that is unsafe while moving is refused for a vehicle
whose latest telemetry says it moves (``schemas.commands.refused_while_moving``, the same
rule the unit applies on receipt). What it returns is what the service then carries out:
the command to store, and whether to send it at once.

Pure: the vehicle's latest state and the time come in as arguments; the service reads them
from the telemetry store and its clock (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from schemas import SignalValue
from schemas.commands import (
    COMMAND_SPECS,
    CommandType,
    ParamValue,
    is_moving,
    refused_while_moving,
    validate_params,
)

__all__ = [
    "Admission",
    "CommandRequest",
    "UnknownCommandType",
    "VehicleMoving",
    "VehicleNotFound",
    "admit",
    "check_request",
]


class UnknownCommandType(GatewayError):
    def __init__(self, value: str) -> None:
        self.value = value
        known = ", ".join(t.value for t in CommandType)
        super().__init__(f"unknown command type {value!r}; known types: {known}")


class VehicleNotFound(GatewayError):
    def __init__(self, vin: str) -> None:
        self.vin = vin
        super().__init__(
            f"no vehicle with VIN {vin} has reported to this gateway; a vehicle must have "
            "connected once before it can be commanded"
        )


class VehicleMoving(GatewayError):
    def __init__(self, vin: str, type_: CommandType) -> None:
        self.vin = vin
        self.type = type_
        super().__init__(
            f"{type_.value} is refused while the vehicle is moving (vehicle {vin} reports "
            "motion); send it again once the vehicle has stopped"
        )


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A request whose type is known and whose parameters are valid."""

    type: CommandType
    #: the parameters as validated (defaults filled in, numbers of the declared type)
    params: dict[str, ParamValue]


def check_request(type_: str, params: Mapping[str, Any]) -> CommandRequest:
    """The request for a command of ``type_`` with ``params``, checked; raises
    :class:`UnknownCommandType` or ``schemas.commands.CommandParamsError``."""
    try:
        command_type = CommandType(type_)
    except ValueError:
        raise UnknownCommandType(type_) from None
    return CommandRequest(command_type, validate_params(command_type, params))


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: what to store, and whether to send it once stored."""

    type: CommandType
    #: the parameters as validated (defaults filled in, numbers of the declared type)
    params: dict[str, ParamValue]
    ttl_ms: int
    result_timeout_ms: int
    #: whether telemetry is to confirm it (its type has an expected state)
    expects_confirmation: bool
    #: send at once after storing: the vehicle's status does not say offline (an offline
    #: vehicle's command waits, queued, for its ``online``)
    send_at_once: bool


def admit(
    request: CommandRequest,
    *,
    vin: str,
    latest: Mapping[str, tuple[SignalValue, int]] | None,
    online: bool | None,
    now_ms: int,
    ttl_s: float | None,
    default_ttl_s: float,
    result_timeout_s: float,
) -> Admission:
    """Decide on a checked ``request`` for a command to ``vin``.

    ``latest`` is the vehicle's latest telemetry (signal path -> (value, sample ts)), None
    if it never reported; ``online`` what its last status said (None: no status yet).
    ``ttl_s`` None takes ``default_ttl_s``. Raises :class:`VehicleNotFound`, then
    :class:`VehicleMoving`.
    """
    command_type = request.type
    if latest is None:
        raise VehicleNotFound(vin)
    if refused_while_moving(command_type, moving=is_moving(latest, now_ms=now_ms)):
        raise VehicleMoving(vin, command_type)
    ttl = default_ttl_s if ttl_s is None else ttl_s
    return Admission(
        type=command_type,
        params=request.params,
        ttl_ms=int(ttl * 1000),
        result_timeout_ms=int(result_timeout_s * 1000),
        expects_confirmation=COMMAND_SPECS[command_type].confirmation is not None,
        send_at_once=online is not False,
    )
