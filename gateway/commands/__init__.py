"""Remote commands: from a person, through the gateway, to a vehicle, and back.

Layout:
    lifecycle.py   the pure state machine of one command (statuses, events, transitions)
    service.py     the command service: publishes commands over MQTT, consumes the units'
                   results, watches telemetry for confirmation and the clock for expiry and
                   timeouts; runs inside the API process

Commands and their transitions live in the state database (``gateway.statedb``).
Everything the unit must understand (topics, payloads, parameters, the safety rules) is the
device contract: ``schemas.commands``.

``lifecycle`` imports ``schemas`` only and stays free of I/O so it can be tested
exhaustively; ``service`` adds gmqtt, the state database and the telemetry store. Imported by
``gateway.api``.
"""

from gateway.commands.lifecycle import (
    LATE_EVENT_PREFIX,
    TERMINAL_STATUSES,
    TRANSITIONS,
    CommandEvent,
    CommandStatus,
    IllegalTransition,
    allowed_events,
    event_for_result,
    is_repeat,
    is_terminal,
    late_event,
    transition,
)

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
