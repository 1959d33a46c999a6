"""The lifecycle of one command: a pure state machine, the single authority on what may follow
what. The service asks :func:`transition` before it records anything; an answer it refuses
(:class:`IllegalTransition`) is logged and changes nothing.

::

                 published                  unit_accepted
     queued ---------------------> sent ---------------------> accepted
      |  |                        | | | |                       |  |  |
      |  | ttl_elapsed            | | | | unit_rejected         |  |  | result_timeout
      |  +--------> expired <-----+ | | +-------> rejected      |  |  +-------> timed_out
      |          ttl_elapsed        | |                         |  |
      | cancel_requested            | |  unit_succeeded         |  |
      v                             | +-----------> succeeded <-+  |
   cancelled                        |    unit_failed               |
                                    +-------------> failed <-------+

(both arrows into ``succeeded`` are ``unit_succeeded``; both into ``failed``, ``unit_failed``;
not drawn: ``vehicle_revoked`` takes ``queued``, ``sent`` and ``accepted`` to ``cancelled``)

The same table as data (:data:`TRANSITIONS`); every other (status, event) pair is illegal:

    queued    published         -> sent
    queued    cancel_requested  -> cancelled
    queued    ttl_elapsed       -> expired
    sent      unit_accepted     -> accepted
    sent      unit_rejected     -> rejected
    sent      ttl_elapsed       -> expired     the unit did not accept in time
    sent      unit_succeeded    -> succeeded   a unit may answer final directly
    sent      unit_failed       -> failed
    accepted  unit_succeeded    -> succeeded
    accepted  unit_failed       -> failed
    accepted  result_timeout    -> timed_out   accepted, but no final answer in time
    queued    vehicle_revoked   -> cancelled   the vehicle was revoked: its holder's
    sent      vehicle_revoked   -> cancelled   commands must never reach the VIN's next
    accepted  vehicle_revoked   -> cancelled   holder, and no answer counts any more

Why these rules:

- Cancelling is possible only while queued. Once sent, the command may already be running
  in the car; pretending to cancel it would lie to the requester. Revoking the vehicle is
  different: the command is withdrawn from the gateway's side whatever its stage (the
  gateway never sends it again and ignores any answer), and its reason says so; a command
  already sent may have run in the car, which the transition history shows.
- Expiry (``ttl_elapsed``) ends a command only before the unit accepted it: the time to live
  bounds when a command may *start*. Once accepted, the unit owns it and the wait for its
  final answer is bounded by ``result_timeout`` instead.
- The six terminal statuses accept nothing, so a late or repeated answer (MQTT QoS 1 may
  deliver twice) can never rewrite history.

Answers after the end: a unit may still answer a command that has ended here (it accepted
and acted after the command expired, or succeeded after ``timed_out``). Such an answer
changes nothing, but it is not dropped: the command's history gets a row with the unchanged
status and the event :func:`late_event` (``late_accepted``, ``late_succeeded``, ...), so an
operator sees that the car acted late. A repeat of an answer already in the history (a QoS 1
redelivery) is not recorded again (:func:`is_repeat`).

Confirmation by telemetry is deliberately not a status: it is a separate fact
(``confirmed_at``) about a succeeded command, decided by ``schemas.commands.is_confirmed_by``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from types import MappingProxyType

from schemas.commands import ResultStatus

__all__ = [
    "LATE_EVENT_PREFIX",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "CommandEvent",
    "CommandStatus",
    "IllegalTransition",
    "allowed_events",
    "event_for_result",
    "is_repeat",
    "is_terminal",
    "late_event",
    "transition",
]


class CommandStatus(enum.StrEnum):
    """Where a command stands, as the requester sees it."""

    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class CommandEvent(enum.StrEnum):
    """What can happen to a command."""

    #: the gateway published it to the vehicle's command topic
    PUBLISHED = "published"
    #: the unit answered ``accepted``
    UNIT_ACCEPTED = "unit_accepted"
    #: the unit answered ``rejected`` (with a reason)
    UNIT_REJECTED = "unit_rejected"
    #: the unit answered ``succeeded``
    UNIT_SUCCEEDED = "unit_succeeded"
    #: the unit answered ``failed``
    UNIT_FAILED = "unit_failed"
    #: the command's expiry time passed
    TTL_ELAPSED = "ttl_elapsed"
    #: accepted, but no final answer within the command's result timeout
    RESULT_TIMEOUT = "result_timeout"
    #: the requester asked to cancel it
    CANCEL_REQUESTED = "cancel_requested"
    #: the vehicle was revoked (its holding period ended) before the command finished
    VEHICLE_REVOKED = "vehicle_revoked"


S = CommandStatus
E = CommandEvent

#: (status, event) -> next status; every pair not listed is an :class:`IllegalTransition`
TRANSITIONS: Mapping[tuple[CommandStatus, CommandEvent], CommandStatus] = MappingProxyType(
    {
        (S.QUEUED, E.PUBLISHED): S.SENT,
        (S.QUEUED, E.CANCEL_REQUESTED): S.CANCELLED,
        (S.QUEUED, E.TTL_ELAPSED): S.EXPIRED,
        (S.SENT, E.UNIT_ACCEPTED): S.ACCEPTED,
        (S.SENT, E.UNIT_REJECTED): S.REJECTED,
        (S.SENT, E.TTL_ELAPSED): S.EXPIRED,
        (S.SENT, E.UNIT_SUCCEEDED): S.SUCCEEDED,
        (S.SENT, E.UNIT_FAILED): S.FAILED,
        (S.ACCEPTED, E.UNIT_SUCCEEDED): S.SUCCEEDED,
        (S.ACCEPTED, E.UNIT_FAILED): S.FAILED,
        (S.ACCEPTED, E.RESULT_TIMEOUT): S.TIMED_OUT,
        (S.QUEUED, E.VEHICLE_REVOKED): S.CANCELLED,
        (S.SENT, E.VEHICLE_REVOKED): S.CANCELLED,
        (S.ACCEPTED, E.VEHICLE_REVOKED): S.CANCELLED,
    }
)

#: statuses nothing leaves
TERMINAL_STATUSES: frozenset[CommandStatus] = frozenset(
    {S.REJECTED, S.SUCCEEDED, S.FAILED, S.EXPIRED, S.TIMED_OUT, S.CANCELLED}
)

_RESULT_EVENTS: Mapping[ResultStatus, CommandEvent] = MappingProxyType(
    {
        ResultStatus.ACCEPTED: E.UNIT_ACCEPTED,
        ResultStatus.REJECTED: E.UNIT_REJECTED,
        ResultStatus.SUCCEEDED: E.UNIT_SUCCEEDED,
        ResultStatus.FAILED: E.UNIT_FAILED,
    }
)

del S, E


class IllegalTransition(ValueError):
    """Raised by :func:`transition` for an event the status does not allow."""

    def __init__(self, status: CommandStatus, event: CommandEvent) -> None:
        self.status = status
        self.event = event
        allowed = allowed_events(status)
        if allowed:
            why = "allowed: " + ", ".join(sorted(e.value for e in allowed))
        else:
            why = f"{status.value} is terminal"
        super().__init__(f"illegal command transition: {event.value} in {status.value} ({why})")


def is_terminal(status: CommandStatus) -> bool:
    return status in TERMINAL_STATUSES


def allowed_events(status: CommandStatus) -> frozenset[CommandEvent]:
    """The events ``status`` accepts (empty for a terminal status)."""
    return frozenset(event for (source, event) in TRANSITIONS if source is status)


def transition(status: CommandStatus, event: CommandEvent) -> CommandStatus:
    """The status after ``event``; raises :class:`IllegalTransition` if it is not allowed."""
    try:
        return TRANSITIONS[status, event]
    except KeyError:
        raise IllegalTransition(status, event) from None


def event_for_result(status: ResultStatus) -> CommandEvent:
    """The event a unit's answer (``schemas.commands.CommandResult.status``) stands for."""
    return _RESULT_EVENTS[status]


#: history events of answers that came after their command had ended: ``late_<status>``
LATE_EVENT_PREFIX = "late_"


def late_event(status: ResultStatus) -> str:
    """The history event that records a unit's ``status`` answer after the command ended."""
    return LATE_EVENT_PREFIX + status.value


def is_repeat(status: ResultStatus, history: Collection[tuple[CommandStatus, str | None]]) -> bool:
    """Whether an answer the lifecycle refused repeats one already recorded: ``history`` is
    the command's (status, event) rows; the answer is in it as the status it brought about,
    or as a late row."""
    return any(
        recorded.value == status.value or event == late_event(status) for recorded, event in history
    )
