"""The lifecycle of one vehicle (one VIN) from the factory to the scrapyard: a pure state
machine, the single authority on which change of a vehicle's life is allowed from where.
(``gateway.core.lifecycle`` is the lifecycle of a *command*; this is the vehicle's.)

States (:class:`VehicleState`)::

    unregistered   the maker never registered the VIN and nobody holds it (a VIN provisioned
                   before this registry existed, once released, is here again)
    built          registered by the maker, held by nobody; claiming it needs its pairing code
    active         held by one account (a holding period, decision 0009, is running)
    in_service     held, and a workshop has temporary access while the car is in for service
    decommissioned terminal: credentials revoked, the VIN never reports again, data kept

Events (:class:`LifecycleEvent`) and what they do; every other (state, event) pair is
refused with a :class:`Refusal` that says why::

    unregistered  register       -> built           the maker registers the car, a code is issued
    unregistered  provision      -> active          claim by VIN, as before this registry
    built         claim          -> active          with the pairing code (proof of possession)
    built         provision      -> active          operators only (administrators, tools)
    built         issue_code     -> built           a new pairing code, the old one stops working
    active        transfer       -> active          a new holder (accepted by the receiver)
    active        service_start  -> in_service
    in_service    service_end    -> active
    active        release        -> built | unregistered   the holder revokes the vehicle
    in_service    release        -> built | unregistered
    any but decommissioned  decommission -> decommissioned

Holding periods: ``claim`` and ``provision`` start one, ``release`` and ``decommission`` (of
a held car) end one, ``transfer`` ends one and starts the next
(:attr:`Transition.ends_tenure`, :attr:`Transition.starts_tenure`, :attr:`Transition.end_reason`).

Why these rules (docs/decisions/0021-vehicle-lifecycle.md):

- A car the maker registered can be claimed only with the code that came with it: a VIN is
  printed on the windscreen, so knowing it proves nothing. Operators keep the old flow.
- A transfer needs the car to be out of service: the workshop's access belongs to the
  holder who gave it, and must not pass to the buyer unnoticed.
- Decommissioning is terminal: a scrapped or stolen-and-written-off unit must never report
  again under this VIN, whoever asks.

Pure (docs/decisions/0013-architecture-step.md): no IO; the state database
(``gateway.statedb.lifecycle``) asks :func:`decide` inside the transaction that changes the
vehicle and records the answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "PAIRING_LOCKOUT_AFTER",
    "PAIRING_MAX_LOCKOUT_S",
    "PAIRING_VIN_LOCKOUT_AFTER",
    "LifecycleEvent",
    "Refusal",
    "Transition",
    "VehicleState",
    "current_state",
    "decide",
]

#: wrong pairing codes of one account for one VIN before that account waits (then 1 s, 2 s,
#: 4 s ... up to the maximum); other accounts are not held up (decision 0023)
PAIRING_LOCKOUT_AFTER: Final = 5
#: wrong pairing codes for one VIN from all accounts together before every account that
#: guessed wrong for it waits (1 s, 2 s ... up to the maximum): the ceiling on many accounts'
#: guesses. An account that never guessed wrong for the VIN (its buyer) is still looked at.
PAIRING_VIN_LOCKOUT_AFTER: Final = 20
#: the longest wait between two pairing attempts, once locked
PAIRING_MAX_LOCKOUT_S: Final = 3600


class VehicleState(enum.StrEnum):
    UNREGISTERED = "unregistered"
    BUILT = "built"
    ACTIVE = "active"
    IN_SERVICE = "in_service"
    DECOMMISSIONED = "decommissioned"


class LifecycleEvent(enum.StrEnum):
    REGISTER = "register"
    ISSUE_CODE = "issue_code"
    CLAIM = "claim"
    PROVISION = "provision"
    TRANSFER = "transfer"
    SERVICE_START = "service_start"
    SERVICE_END = "service_end"
    RELEASE = "release"
    DECOMMISSION = "decommission"


@dataclass(frozen=True, slots=True)
class Transition:
    """An allowed change: from where to where, and what it does to the holding period."""

    event: LifecycleEvent
    before: VehicleState
    after: VehicleState
    starts_tenure: bool = False
    ends_tenure: bool = False
    #: ``vehicle_tenures.end_reason`` of the period it ends (None: it ends none)
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused change: ``reason`` is a stable code (the API's error code), ``message``
    says it to a person."""

    event: LifecycleEvent
    state: VehicleState
    reason: str
    message: str


_HELD: Final = frozenset({VehicleState.ACTIVE, VehicleState.IN_SERVICE})


def current_state(
    *, registered: bool, held: bool, in_service: bool, decommissioned: bool
) -> VehicleState:
    """The state of a VIN from what the registry knows of it (kept in two tables: whether
    an account holds it is the ``vehicles`` row's, the rest the lifecycle row's)."""
    if decommissioned:
        return VehicleState.DECOMMISSIONED
    if held:
        return VehicleState.IN_SERVICE if in_service else VehicleState.ACTIVE
    return VehicleState.BUILT if registered else VehicleState.UNREGISTERED


def decide(
    state: VehicleState,
    event: LifecycleEvent,
    *,
    registered: bool = False,
    by_operator: bool = False,
    same_holder: bool = False,
) -> Transition | Refusal:
    """May ``event`` happen to a vehicle in ``state``?

    ``registered``: the maker registered the VIN (a released car goes back to ``built``,
    else to ``unregistered``); ``by_operator``: an administrator or an operator's tool asks
    (only they provision a built car without its code); ``same_holder``: a transfer's
    receiving account is the one that holds the car.
    """
    if state is VehicleState.DECOMMISSIONED:
        return _refuse(
            event,
            state,
            "vehicle_decommissioned",
            "the vehicle is decommissioned: nothing can happen to it any more",
        )
    if event is LifecycleEvent.DECOMMISSION:
        return Transition(
            event,
            state,
            VehicleState.DECOMMISSIONED,
            ends_tenure=state in _HELD,
            end_reason="decommissioned" if state in _HELD else None,
        )
    if event is LifecycleEvent.RELEASE:
        if state not in _HELD:
            return _refuse(event, state, "vehicle_not_held", "nobody holds the vehicle")
        after = VehicleState.BUILT if registered else VehicleState.UNREGISTERED
        return Transition(event, state, after, ends_tenure=True, end_reason="revoked")
    rule = _RULES.get((state, event))
    if rule is None:
        return _refuse(event, state, *_WHY_NOT_HERE.get((state, event), _WHY_NOT[state]))
    if event is LifecycleEvent.PROVISION and state is VehicleState.BUILT and not by_operator:
        return _refuse(
            event,
            state,
            "pairing_code_required",
            "the maker registered this vehicle: claiming it needs the pairing code that came "
            "with it (POST /v1/vehicles/{vin}/claim)",
        )
    if event is LifecycleEvent.TRANSFER and same_holder:
        return _refuse(
            event, state, "same_holder", "the receiving account already holds the vehicle"
        )
    return rule


def _refuse(event: LifecycleEvent, state: VehicleState, reason: str, message: str) -> Refusal:
    return Refusal(event, state, reason, message)


_S = VehicleState
_E = LifecycleEvent

#: the allowed (state, event) pairs besides release and decommission (decided above)
_RULES: Final[dict[tuple[VehicleState, LifecycleEvent], Transition]] = {
    (_S.UNREGISTERED, _E.REGISTER): Transition(_E.REGISTER, _S.UNREGISTERED, _S.BUILT),
    (_S.UNREGISTERED, _E.PROVISION): Transition(
        _E.PROVISION, _S.UNREGISTERED, _S.ACTIVE, starts_tenure=True
    ),
    (_S.BUILT, _E.CLAIM): Transition(_E.CLAIM, _S.BUILT, _S.ACTIVE, starts_tenure=True),
    (_S.BUILT, _E.PROVISION): Transition(_E.PROVISION, _S.BUILT, _S.ACTIVE, starts_tenure=True),
    (_S.BUILT, _E.ISSUE_CODE): Transition(_E.ISSUE_CODE, _S.BUILT, _S.BUILT),
    (_S.ACTIVE, _E.TRANSFER): Transition(
        _E.TRANSFER,
        _S.ACTIVE,
        _S.ACTIVE,
        starts_tenure=True,
        ends_tenure=True,
        end_reason="transferred",
    ),
    (_S.ACTIVE, _E.SERVICE_START): Transition(_E.SERVICE_START, _S.ACTIVE, _S.IN_SERVICE),
    (_S.IN_SERVICE, _E.SERVICE_END): Transition(_E.SERVICE_END, _S.IN_SERVICE, _S.ACTIVE),
}

#: why an event not in the table is refused, by the state it found (refined per event
#: where the state alone says too little)
_WHY_NOT: Final[dict[VehicleState, tuple[str, str]]] = {
    _S.UNREGISTERED: (
        "vehicle_not_registered",
        "the maker has not registered the vehicle and nobody holds it",
    ),
    _S.BUILT: ("vehicle_not_held", "nobody holds the vehicle yet"),
    _S.ACTIVE: ("vehicle_held", "an account holds the vehicle"),
    _S.IN_SERVICE: (
        "vehicle_in_service",
        "the vehicle is in service: its holder ends the service first",
    ),
}

#: refusals the state alone does not explain well enough
_WHY_NOT_HERE: Final[dict[tuple[VehicleState, LifecycleEvent], tuple[str, str]]] = {
    (_S.BUILT, _E.REGISTER): ("vehicle_already_registered", "the vehicle is registered already"),
    (_S.ACTIVE, _E.SERVICE_END): ("vehicle_not_in_service", "the vehicle is not in service"),
}
