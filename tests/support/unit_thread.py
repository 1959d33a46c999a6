"""A simulated unit on a thread of its own, against a gateway started by the test."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.testclient import TestClient

from device_sim.city import MUNICH
from device_sim.unit import SimulatedUnit, UnitSettings
from device_sim.vehicle import SimulatedVehicle, VehicleProfile
from tests.support.waiting import wait_until

VIN = "WSMZZZ00000000077"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parked_ev() -> SimulatedVehicle:
    """An electric car that stays parked: immobilized before its first trip, so commands
    that are refused while moving can run (release_immobilizer comes last)."""
    vehicle = SimulatedVehicle(
        VIN,
        VehicleProfile.ELECTRIC_CAR,
        MUNICH,
        random.Random(7),
        "Marienplatz",
        start_ms=now_ms(),
        initial_level_pct=50.0,
    )
    vehicle.immobilize()
    return vehicle


class Address(Protocol):
    """Where a broker listens: a ``MosquittoProcess`` or an :class:`At`."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


@dataclass(frozen=True)
class At:
    """A broker's address given by hand (the plain MQTT port of ``telematics up``)."""

    host: str
    port: int


class UnitThread:
    """One SimulatedUnit on its own event loop in a thread, as a car would run it."""

    def __init__(self, broker: Address, vehicle: SimulatedVehicle, **kw: Any) -> None:
        self.settings = UnitSettings(
            host=broker.host, port=broker.port, report_interval_s=0.2, **kw
        )
        self.vehicle = vehicle
        self.unit: SimulatedUnit | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            self.unit = SimulatedUnit(self.vehicle, self.settings, first_seq=now_ms())
            await self.unit.run(self._stop)

        self._loop.run_until_complete(main())
        self._loop.close()

    def start(self) -> UnitThread:
        self._thread.start()
        wait_until(
            lambda: self.unit is not None and self.unit.subscribed,
            what="the unit to connect and subscribe to its commands",
        )
        return self

    def drive(self, change: Callable[[SimulatedVehicle], None]) -> None:
        """Run ``change`` on the vehicle in the unit's own thread (the one that steps it), as a
        driver in the car would: the simulated vehicle is not shared between threads."""
        self._loop.call_soon_threadsafe(change, self.vehicle)

    def stop(self) -> None:
        """A clean stop: the unit publishes 'offline' and disconnects."""
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive()

    def stats(self) -> Any:
        assert self.unit is not None
        return self.unit.stats()


def known_and_online(api: TestClient) -> None:
    wait_until(
        lambda: (
            api.get(f"/v1/vehicles/{VIN}").status_code == 200
            and api.get(f"/v1/vehicles/{VIN}").json()["online"] is True
        ),
        what="the unit to be known and online",
    )
