"""Which command a unit's answer may touch.

:func:`refusal` is what the command service asks for every well-formed result before it
applies it: a result for an unknown command, for a command of another vehicle, or whose MQTT 5
correlation data names another command changes nothing and goes to the quarantine with the
reason returned here.

Pure (docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

from schemas import Reason, Rejection
from schemas.commands import CommandResult

__all__ = ["refusal"]


def refusal(
    result: CommandResult,
    *,
    command_vin: str | None,
    topic_vin: str,
    correlation: bytes | None,
) -> Rejection | None:
    """Why a well-formed ``result`` (on ``topic_vin``'s result topic) must not touch any
    command (a quarantine reason), or None. ``command_vin`` is the VIN of the command its
    ``command_id`` names, None if there is no such command.

    The body's ``command_id`` is what identifies the command; MQTT 5 correlation data, when
    the unit sends it, must be that id's bytes (a unit answering with another command's
    correlation data has mixed up two commands, and either may be wrong)."""
    vin = topic_vin
    if correlation is not None and correlation != result.command_id.encode():
        return Rejection(
            Reason.CORRELATION_MISMATCH,
            f"correlation data {correlation[:80]!r} is not the result's command_id "
            f"{result.command_id}; the result changes nothing",
            vin=vin,
        )
    if command_vin is None:
        return Rejection(
            Reason.UNKNOWN_COMMAND,
            f"no command {result.command_id} exists; the result changes nothing",
            vin=vin,
        )
    if command_vin != vin:
        return Rejection(
            Reason.VIN_MISMATCH,
            f"command {result.command_id} is for {command_vin}, but the result came on "
            f"{vin}'s result topic; the result changes nothing",
            vin=vin,
        )
    return None
