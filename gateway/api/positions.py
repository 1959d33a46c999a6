"""The positions feed of one API process, behind ``GET /v1/positions/stream`` (the web
dashboard's live map).

One poller per process, whatever the number of open maps, like the event bus
(``gateway.notify.bus``): every ``poll_s`` it reads the samples committed since its cursor
(:meth:`TelemetryReader.samples_after`, commit order, one indexed read), folds the map
signals of each into that vehicle's :class:`Position` and marks it with the new generation.
Every ``presence_s`` it also reads, in one query, the status of every vehicle it holds
(``list_vehicles`` of those (vin, tenure) pairs) and marks those whose ``online`` turned (a
Last Will, an ``offline`` status, silence past the limit, or back online): the map greys a
vehicle that goes offline without a reload. Streams seed the feed with their snapshot, so a
vehicle that has not moved since the feed started is watched too. Each stream then sends
only the positions changed since the generation it last sent, and only of the vehicles its
caller may read (the same ``visible_vins`` as ``GET /v1/vehicles``, checked per vehicle and
holding period, refreshed every 30 s). A stream that begins, or reconnects, first gets a
snapshot read from the store. The poller reads only while some stream is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from gateway.core.presence import presence
from gateway.store import TelemetryReader, VehicleSummary
from schemas import SignalValue

__all__ = ["MAP_SIGNALS", "Position", "PositionFeed", "number_of", "position_of"]

log = logging.getLogger(__name__)

LAT: Final = "Vehicle.CurrentLocation.Latitude"
LON: Final = "Vehicle.CurrentLocation.Longitude"
SPEED: Final = "Vehicle.Speed"
SOC: Final = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
FUEL: Final = "Vehicle.Powertrain.FuelSystem.RelativeLevel"
#: signal -> the field of :class:`Position` it sets
MAP_SIGNALS: Final = {LAT: "lat", LON: "lon", SPEED: "speed", SOC: "soc", FUEL: "fuel"}
#: samples read per poll (2,000 vehicles at 1 Hz and a 0.5 s poll need 1,000)
_BATCH: Final = 5000


@dataclass(frozen=True, slots=True)
class Position:
    vin: str
    tenure: int
    lat: float | None = None
    lon: float | None = None
    speed: float | None = None
    soc: float | None = None
    fuel: float | None = None
    #: sample time of the newest value folded in, epoch ms
    ts: int = 0
    online: bool | None = None
    #: the feed's generation when this last changed (0: from a snapshot)
    gen: int = 0

    def json(self) -> dict[str, Any]:
        return {
            "vin": self.vin,
            "lat": self.lat,
            "lon": self.lon,
            "speed": self.speed,
            "soc": self.soc,
            "fuel": self.fuel,
            "ts": self.ts,
            "online": self.online,
        }


def number_of(value: SignalValue | None) -> float | None:
    """A map signal's value as a number (None: not a number; booleans are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def position_of(
    base: Position, values: Mapping[str, SignalValue], ts: int, gen: int
) -> Position | None:
    """``base`` with the map signals of one sample folded in; None when it carries none
    or is older than what ``base`` already holds. ``online`` stays as ``base`` has it
    (the vehicle's status decides it, read by the feed): a sample alone does not turn a
    vehicle whose status says offline online, nor back and forth."""
    found = {
        MAP_SIGNALS[k]: number
        for k, v in values.items()
        if k in MAP_SIGNALS and (number := number_of(v)) is not None
    }
    if not found or ts < base.ts:
        return None
    # online as last known (the feed's status read decides it); a first sample: online
    online = True if base.online is None else base.online
    return replace(base, **found, ts=ts, online=online, gen=gen)  # type: ignore[arg-type]


def _newest_id(reader: TelemetryReader) -> int:
    """The id of the newest committed sample (0: none), in O(log n) indexed reads: ids
    only grow, so "is there a sample after c" is monotonic in c."""
    low, high = 0, 1024
    while reader.samples_after(high, limit=1):
        low, high = high, high * 2
    while high - low > 1:  # a sample after low, none after high
        middle = (low + high) // 2
        if reader.samples_after(middle, limit=1):
            low = middle
        else:
            high = middle
    first = reader.samples_after(low, limit=1)
    return first[0].id if first else low


class PositionFeed:
    """See the module docstring. :meth:`start`, :meth:`stop`; streams :meth:`subscribe`
    and :meth:`unsubscribe`."""

    def __init__(
        self,
        open_reader: Callable[[], TelemetryReader],
        *,
        poll_s: float = 0.5,
        presence_s: float = 2.0,
        clock_ms: Callable[[], int] | None = None,
        silent_after_ms: int = 600_000,
    ):
        self._open_reader = open_reader
        self.poll_s = poll_s
        self.presence_s = presence_s
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._silent_after_ms = silent_after_ms
        self._presence_due = 0.0
        self.latest: dict[str, Position] = {}
        self.generation = 0
        #: -1: to be found (the newest sample) when the feed next reads
        self._cursor = -1
        self._subscribers = 0
        self._active = asyncio.Event()
        self._new = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _read(self, action: Callable[[TelemetryReader], Any]) -> Any:
        reader = self._open_reader()
        try:
            return action(reader)
        finally:
            reader.close()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        self._active.set()  # wake an idle loop
        if self._task is not None:
            await self._task

    def subscribe(self) -> None:
        """A stream begins: the feed reads while it has any (an installation nobody
        watches on a map costs no reads)."""
        self._subscribers += 1
        self._active.set()

    def unsubscribe(self) -> None:
        self._subscribers -= 1
        if self._subscribers <= 0:
            self._subscribers = 0
            self._active.clear()

    def seed(self, positions: list[Position]) -> None:
        """A stream's snapshot: the vehicles the feed does not hold yet (or holds at another
        holding period) are taken as they are, unsent (generation 0), so their status is
        watched from now on."""
        for position in positions:
            held = self.latest.get(position.vin)
            if held is None or held.tenure != position.tenure:
                self.latest[position.vin] = replace(position, gen=0)

    async def wait(self, after_generation: int, timeout_s: float) -> bool:
        """Wait until a generation after ``after_generation`` exists, at most
        ``timeout_s``; whether one does."""
        if self.generation > after_generation:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout_s)
        return self.generation > after_generation

    async def _run(self) -> None:
        failing = False
        while not self._stopping.is_set():
            if not self._active.is_set():
                await self._active.wait()
                if self._stopping.is_set():
                    return
                # idle until now: start from the newest sample (each stream begins with a
                # snapshot from the store), not from where the feed stopped reading
                self._cursor = -1
            try:
                if self._cursor < 0:
                    self._cursor = await asyncio.to_thread(self._read, _newest_id)
                await self._poll()
                if time.monotonic() >= self._presence_due:
                    self._presence_due = time.monotonic() + self.presence_s
                    await self._presence()
                if failing:
                    log.info("the positions feed reads the store again")
                failing = False
            except Exception:
                if not failing:  # once per outage, not twice a second
                    log.exception("reading new samples for the positions feed failed; retrying")
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.poll_s)

    async def _poll(self) -> None:
        cursor = self._cursor
        samples = await asyncio.to_thread(
            self._read, lambda r: r.samples_after(cursor, limit=_BATCH)
        )
        if not samples:
            return
        gen = self.generation + 1
        changed = False
        for sample in samples:
            base = self.latest.get(sample.vin)
            if base is None or base.tenure != sample.tenure:
                base = Position(sample.vin, sample.tenure)
            moved = position_of(base, sample.values, sample.ts, gen)
            if moved is not None:
                self.latest[sample.vin] = moved
                changed = True
        self._cursor = samples[-1].id
        if changed:
            self._advance(gen)

    def _advance(self, gen: int) -> None:
        self.generation = gen
        woken, self._new = self._new, asyncio.Event()
        woken.set()

    async def _presence(self) -> None:
        """Mark the vehicles whose ``online`` (as the API shows it) turned since the feed
        last looked: one read of their status, whatever their number."""
        held = {vin: p.tenure for vin, p in self.latest.items()}
        if not held:
            return
        summaries: list[VehicleSummary] = await asyncio.to_thread(
            self._read, lambda r: r.list_vehicles(limit=len(held), vins=held)
        )
        now = self._clock_ms()
        gen = self.generation + 1
        changed = False
        for summary in summaries:
            position = self.latest.get(summary.vin)
            if position is None or position.tenure != held[summary.vin]:
                continue  # replaced by a newer holding period meanwhile
            online, _ = presence(
                summary.online,
                summary.last_seen,
                now_ms=now,
                silent_after_ms=self._silent_after_ms,
            )
            if online is not None and online != position.online:
                self.latest[summary.vin] = replace(position, online=online, gen=gen)
                changed = True
        if changed:
            self._advance(gen)
