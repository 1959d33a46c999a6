"""The live demo's misbehaving delivery vans (``telematics sim --misbehave``, on in
``telematics up --demo``): so that every fleet rule fires in the demo, each delivery van
runs :data:`ROUND` once an hour, in real time (the live simulator has no time scale, so the
idling takes its full 22 minutes):

- at once: drives to Marienplatz in the old town, speeding (60 km/h whatever the limit) and
  pulling away hard for 8 minutes: it leaves the depot (out of its hours at night or on
  Sunday), enters the demo's 30 km/h city-centre zone and speeds in it;
- after 1 minute: trouble code P0300 (random misfire), cleared 10 minutes later;
- after 6 minutes: fuel down to 6 %;
- after 8 minutes: on to Odeonsplatz, brakes hard on the way, then idles 22 minutes with
  the engine running (waiting for a customer), then drives on;
- after 33 minutes: the unit goes silent for 8 minutes (hung firmware).

A scenario file does the same in compressed time (``scenarios/misbehaving-van.toml``, with
the scenario actions ``speed``, ``brake_hard``, ``idle``, ``fault`` and ``go_silent``).
Pure: :meth:`Routine.due` says what is due by the vehicle's simulated time, the unit
carries it out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from device_sim.vehicle import SimulatedVehicle

__all__ = ["CYCLE_S", "ROUND", "Routine", "Step"]

#: the round repeats this often, simulated seconds
CYCLE_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Step:
    """At ``at_s`` into the round, ``act`` on the vehicle; ``silence_s``: the unit says
    nothing for that long (the vehicle itself goes on)."""

    at_s: float
    what: str
    act: Callable[[SimulatedVehicle], None] | None = None
    silence_s: float = 0.0


ROUND: Final = (
    Step(0.0, "to Marienplatz", lambda v: v.go_to("Marienplatz")),
    Step(0.0, "speeding for 8 minutes", lambda v: v.speed(60.0, 480.0)),
    Step(60.0, "trouble code P0300 for 10 minutes", lambda v: v.raise_fault("P0300", 600.0)),
    Step(360.0, "fuel down to 6 %", lambda v: v.set_energy_level(6.0)),
    Step(480.0, "on to Odeonsplatz", lambda v: v.go_to("Odeonsplatz")),
    Step(510.0, "an emergency stop", lambda v: v.brake_hard()),
    Step(540.0, "idling 22 minutes", lambda v: v.idle(1320.0)),
    Step(1980.0, "silent for 8 minutes", silence_s=480.0),
)


@dataclass(slots=True)
class Routine:
    """Which steps of the round are due; the first call starts the first round."""

    steps: tuple[Step, ...] = ROUND
    cycle_s: float = CYCLE_S
    _start_s: float | None = field(default=None, init=False)
    _next: int = field(default=0, init=False)
    _round: int = field(default=0, init=False)

    def due(self, elapsed_s: float) -> list[Step]:
        """The steps due by ``elapsed_s`` (the vehicle's simulated seconds) not given yet,
        in order; a late call gives every step missed, once."""
        if self._start_s is None:
            self._start_s = elapsed_s
        out: list[Step] = []
        while True:
            if self._next == len(self.steps):
                self._next, self._round = 0, self._round + 1
            step = self.steps[self._next]
            at = self._start_s + self._round * self.cycle_s + step.at_s
            if at > elapsed_s:
                return out
            out.append(step)
            self._next += 1
