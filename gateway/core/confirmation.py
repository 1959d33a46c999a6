"""Confirmation by telemetry: did the vehicle reach the state a succeeded command promised?

:func:`judge_confirmation` is what the command service's timer asks for each succeeded
command still ``pending``: ``confirmed`` (with the newest sample's time) when fresh telemetry
shows the expected state (``schemas.commands.is_confirmed_by``), ``unconfirmed`` once the
confirmation window has passed without it, or nothing yet. "Fresh" is measured on one
clock: the samples' ``ts`` and the unit's time of acceptance are both the unit's; commands
from before the unit's time was kept, and a unit's time before 2020 (a clock never set,
whose samples the gateway refuses while the latest state still holds older ones), fall
back to the gateway's times.

Pure: the command's times, its vehicle's latest state and now come in as arguments
(docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas import SignalValue
from schemas.commands import CONFIRMATION_TOLERANCE_MS, CommandType, is_confirmed_by
from schemas.payloads import DEFAULT_LIMITS

__all__ = ["CommandTimes", "Verdict", "judge_confirmation"]


@dataclass(frozen=True, slots=True)
class CommandTimes:
    """The times of a command that confirmation is measured from (epoch ms)."""

    created_at: int
    sent_at: int | None
    accepted_at: int | None
    finished_at: int | None
    #: the unit's clock when it took the command on (None for older commands)
    unit_accepted_at: int | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """``confirmation`` is ``confirmed`` (``confirmed_at``: the newest confirming sample's
    ts) or ``unconfirmed`` (``confirmed_at`` None)."""

    confirmation: str
    confirmed_at: int | None


def judge_confirmation(
    type_: CommandType,
    params: Mapping[str, Any],
    times: CommandTimes,
    latest: Mapping[str, tuple[SignalValue, int]] | None,
    *,
    now_ms: int,
    confirm_window_ms: float,
) -> Verdict | None:
    """The verdict on a succeeded command, or None while it is still open (see the module
    docstring); ``latest`` is its vehicle's latest telemetry (None: nothing stored)."""
    unit_time = times.unit_accepted_at
    if unit_time is not None and unit_time >= DEFAULT_LIMITS.min_plausible_ts_ms:
        since = unit_time - CONFIRMATION_TOLERANCE_MS
    else:
        since = times.accepted_at or times.sent_at or times.created_at
    fresh: dict[str, SignalValue] = {}
    newest = 0
    for path, (value, ts) in (latest or {}).items():
        if ts >= since:
            fresh[path] = value
            newest = max(newest, ts)
    if fresh and is_confirmed_by(type_, params, fresh):
        return Verdict("confirmed", newest)
    if now_ms - (times.finished_at or now_ms) > confirm_window_ms:
        return Verdict("unconfirmed", None)
    return None
