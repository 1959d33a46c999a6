"""A fleet of simulated units, and the ``python -m device_sim`` command that runs one.

:func:`run_fleet` builds ``count`` vehicles deterministically from a seed (the same seed gives
the same VINs, profiles, start nodes and driving) and runs one :class:`SimulatedUnit` per
vehicle, all on one event loop, until ``stop`` is set. It is what ``telematics up --demo``
starts (as ``python -m device_sim``) to have a few cars, SUVs and delivery vans driving around
Munich and reporting to the gateway.

Sequence numbers
    A fleet restarted by a supervisor reuses its VINs, and the gateway drops a repeated
    (vin, seq) as a duplicate. So unless told otherwise the first ``seq`` of samples and
    events is the start time in milliseconds: a unit sends at most one sample per
    millisecond, so a later run always starts above every seq of an earlier one.
    With ``--seq-state FILE`` (``telematics up --demo`` gives one) each unit continues its
    own counters from the file instead, as a real unit does from non-volatile memory
    (:mod:`device_sim.seqstate`): no gap after a restart.

Remote commands
    Every unit answers the commands the gateway sends it (see :mod:`device_sim.unit`). To
    exercise a gateway's handling of slow and unresponsive vehicles, a share of the units
    can be *slow* (``slow_delay_s`` between ``accepted`` and ``succeeded``) and another share
    *silent* (they receive commands but never answer). Which units are chosen follows from
    the seed alone (:func:`command_roles`): ``round(share * count)`` of each, never both.

Broker identity
    A gateway that gives every vehicle its own broker account (user name = VIN, a password
    shown once at provisioning, an ACL that confines it to its own topics) refuses a fleet
    sharing one login. ``--credentials FILE`` (:mod:`device_sim.credentials`, written by
    provisioning) gives every unit its own: the VIN's user name and password, or its TLS
    client certificate, plus the gateway's command signing key and the broker URL. Without
    ``--vehicles`` the fleet is exactly the vehicles in the file (``--vins-from-credentials``);
    with ``--vehicles N`` it is the usual ``make_vin(1..N)`` fleet (:func:`fleet_vins`, what
    ``telematics up --demo`` provisions), and every one of them must be in the file. Secrets
    never go on a command line: ``--procs`` children get the file's path and read it
    themselves, and a shared ``--username``'s password comes from an environment variable.

TLS
    ``--tls-ca FILE`` (or an ``mqtts://`` URL, which needs it) makes every unit connect over
    TLS and trust only that CA; client certificates come from the credentials file's entries
    or ``--tls-cert-dir DIR`` (``DIR/VIN.crt`` and ``DIR/VIN.key``).

Imports: the standard library, gmqtt (through :mod:`device_sim.unit`), ``schemas`` and
``device_sim`` only; never ``gateway``, so the simulator can be run against any broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TextIO

from device_sim.city import DEPOT, MUNICH, RoadNetwork
from device_sim.console import (
    LIVE_REFRESH_S,
    PASSWORD_ENV,
    ProgressDisplay,
    report,
    say,
)
from device_sim.credentials import UnitCredentials, VehicleCredential, load_credentials
from device_sim.faults import FaultKind, FaultRates
from device_sim.procs import run_procs
from device_sim.seqstate import RESERVED_BLOCK, Counters, SeqStateFile
from device_sim.stats import (
    UNIT_DETAIL_LIMIT,
    LatencyHistogram,
    Shard,
    process_usage,
    resources_summary,
)
from device_sim.unit import (
    DEFAULT_BUFFER_LIMIT,
    SimulatedUnit,
    UnitConnectError,
    UnitSettings,
    UnitTakenOver,
    wall_clock_ms,
)
from device_sim.vehicle import SimulatedVehicle, VehicleProfile, make_vin
from schemas.broker_url import BrokerAddress, parse_broker_url
from schemas.signing import load_public_key_pem
from schemas.vin import is_valid_vin

__all__ = [
    "DEFAULT_CONNECT_RATE",
    "DEFAULT_PROFILES",
    "DEFAULT_VEHICLES",
    "DEFAULT_VIN_PREFIX",
    "BrokerAddress",
    "CommandRole",
    "FleetRun",
    "FleetSettings",
    "build_parser",
    "build_unit_settings",
    "build_vehicles",
    "command_roles",
    "fleet_vins",
    "main",
    "parse_broker_url",
    "parse_mqtt_url",
    "parse_shard",
    "run_fleet",
    "summarize",
    "with_credential",
]

log = logging.getLogger(__name__)

#: the example of an open broker's URL in messages: an example, never a default (decision 0046)
_EXAMPLE_OPEN_URL: Final = "mqtt://127.0.0.1:1883"
#: vehicles of a fleet unless told otherwise (``--vehicles``, or a credentials file)
DEFAULT_VEHICLES: Final = 5
#: the first characters of every simulated VIN (``make_vin``'s default)
DEFAULT_VIN_PREFIX: Final = "WSMZZZ"

#: vehicle i (1-based) gets DEFAULT_PROFILES[(i - 1) % 3]: a mixed fleet from three vehicles on
DEFAULT_PROFILES: Final = (
    VehicleProfile.ELECTRIC_CAR,
    VehicleProfile.COMBUSTION_SUV,
    VehicleProfile.DELIVERY_VAN,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSettings:
    """Which vehicles a fleet has. Vehicle ``i`` (1..count) gets VIN ``make_vin(i,
    vin_prefix)`` (or ``vins[i - 1]`` when ``vins`` is given), profile
    ``profiles[(i - 1) % len(profiles)]`` and its own ``random.Random(f"{seed}:{i}")``.
    Delivery vans start at ``depot``; the other vehicles start at distinct nodes of ``city``
    (drawn with the seed; reused only when there are more vehicles than nodes)."""

    count: int = DEFAULT_VEHICLES
    seed: int = 1
    profiles: tuple[VehicleProfile, ...] = DEFAULT_PROFILES
    city: RoadNetwork = MUNICH
    depot: str = DEPOT
    vin_prefix: str = DEFAULT_VIN_PREFIX
    #: the VINs of vehicles 1..count, e.g. those of a credentials file; None: ``make_vin``
    vins: tuple[str, ...] | None = None
    #: the vehicles' simulated clock at start, ms since the epoch; None: the wall clock
    start_ms: int | None = None
    #: seq of the first sample and first event of every unit; None: the start time in ms
    first_seq: int | None = None
    #: seconds between two ``on_progress`` calls
    progress_interval_s: float = 5.0
    #: share of the units (0..1) that take ``slow_delay_s`` to carry out a command
    slow_share: float = 0.0
    #: a slow unit's time between ``accepted`` and ``succeeded``, seconds
    slow_delay_s: float = 2.0
    #: share of the units (0..1) that receive commands but never answer them
    silent_share: float = 0.0
    #: the delivery vans run the demo's round of misbehaviour (device_sim.misbehaviour)
    misbehave: bool = False

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if not self.profiles:
            raise ValueError("profiles must name at least one vehicle profile")
        if self.vins is not None:
            if len(self.vins) != self.count:
                raise ValueError(f"vins has {len(self.vins)} VINs for {self.count} vehicles")
            bad = [v for v in self.vins if not is_valid_vin(v)]
            if bad:
                raise ValueError(f"invalid VIN(s) in vins: {', '.join(map(repr, bad[:5]))}")
            if len(set(self.vins)) != len(self.vins):
                raise ValueError("vins names a VIN twice")
        if self.depot not in self.city.nodes:
            raise ValueError(f"the depot {self.depot!r} is not a node of the city")
        if not self.progress_interval_s > 0:
            raise ValueError(f"progress_interval_s must be > 0, got {self.progress_interval_s}")
        for name in ("slow_share", "silent_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.slow_share + self.silent_share > 1.0 + 1e-9:
            raise ValueError(
                f"slow_share + silent_share must be <= 1 (a unit is slow or silent, not both), "
                f"got {self.slow_share} + {self.silent_share}"
            )
        if not (math.isfinite(self.slow_delay_s) and self.slow_delay_s >= 0):
            raise ValueError(f"slow_delay_s must be a finite number >= 0, got {self.slow_delay_s}")

    def vin(self, number: int) -> str:
        """The VIN of vehicle ``number`` (1..count)."""
        if not 1 <= number <= self.count:
            raise ValueError(f"vehicle number must be 1..{self.count}, got {number}")
        if self.vins is not None:
            return self.vins[number - 1]
        return make_vin(number, self.vin_prefix)

    def all_vins(self) -> list[str]:
        """The VINs of vehicles 1..count, in order."""
        return [self.vin(i) for i in range(1, self.count + 1)]


def fleet_vins(count: int, *, vin_prefix: str = DEFAULT_VIN_PREFIX) -> list[str]:
    """The VINs of a ``count``-vehicle fleet (``telematics sim --vehicles count``), in order.

    So that a launcher can provision exactly the vehicles the simulator will run before
    starting it (``telematics up --demo``). Only ``count`` (and the prefix, which the command
    line does not change) decides the VINs: the seed, profiles and rates do not.
    """
    return FleetSettings(count=count, vin_prefix=vin_prefix).all_vins()


class CommandRole(enum.Enum):
    """How a unit of the fleet answers commands."""

    #: at once: accepted, then succeeded (or failed)
    NORMAL = "normal"
    #: accepted, then succeeded after ``FleetSettings.slow_delay_s``
    SLOW = "slow"
    #: receives commands, never answers (nor runs) them
    SILENT = "silent"


def command_roles(settings: FleetSettings) -> list[CommandRole]:
    """The role of vehicle 1..count, in VIN order; the same settings give the same roles.

    ``round(silent_share * count)`` units are silent and ``round(slow_share * count)`` of the
    others slow, drawn with the seed (independently of the vehicles' own random streams).
    """
    count = settings.count
    order = list(range(count))
    random.Random(f"{settings.seed}:command-roles").shuffle(order)
    silent = min(count, round(settings.silent_share * count))
    slow = min(count - silent, round(settings.slow_share * count))
    roles = [CommandRole.NORMAL] * count
    for index in order[:silent]:
        roles[index] = CommandRole.SILENT
    for index in order[silent : silent + slow]:
        roles[index] = CommandRole.SLOW
    return roles


#: adjusts a unit's settings for its VIN, e.g. to give it its own credentials
PerVin = Callable[[str, UnitSettings], UnitSettings]


def with_credential(
    settings: UnitSettings, credential: VehicleCredential, *, cert_dir: Path | None = None
) -> UnitSettings:
    """``settings`` with the broker identity of one vehicle: its user name and password and,
    over TLS, its client certificate (``cert_dir/VIN.crt`` and ``.key`` if ``cert_dir`` is
    given, else the credential's own). Without TLS a client certificate is not used."""
    cert, key = credential.client_cert, credential.client_key
    if cert_dir is not None:
        cert, key = _cert_dir_files(cert_dir, credential.vin)
    tls = settings.tls_ca_file is not None
    return replace(
        settings,
        username=credential.mqtt_username,
        password=credential.mqtt_password,
        tls_cert_file=cert if tls else None,
        tls_key_file=key if tls else None,
    )


def _cert_dir_files(cert_dir: Path, vin: str) -> tuple[Path, Path]:
    return cert_dir / f"{vin}.crt", cert_dir / f"{vin}.key"


def build_unit_settings(
    settings: FleetSettings, base: UnitSettings, *, per_vin: PerVin | None = None
) -> list[UnitSettings]:
    """``base`` adjusted per unit for its :func:`command_roles` role, in VIN order; then by
    ``per_vin`` (e.g. :func:`with_credential`: each unit its own login), if given."""
    out: list[UnitSettings] = []
    for role in command_roles(settings):
        if role is CommandRole.SLOW:
            out.append(replace(base, command_delay_s=settings.slow_delay_s))
        elif role is CommandRole.SILENT:
            out.append(replace(base, answers_commands=False))
        else:
            out.append(base)
    if settings.misbehave:
        profiles = settings.profiles
        out = [
            replace(s, misbehave=True)
            if profiles[i % len(profiles)] is VehicleProfile.DELIVERY_VAN
            else s
            for i, s in enumerate(out)
        ]
    if per_vin is not None:
        out = [per_vin(vin, s) for vin, s in zip(settings.all_vins(), out, strict=True)]
    return out


def build_vehicles(
    settings: FleetSettings,
    *,
    start_ms: int,
    first_event_seq: int = 0,
    numbers: Container[int] | None = None,
    first_seqs: Mapping[str, Counters] | None = None,
) -> list[SimulatedVehicle]:
    """The fleet's vehicles, in VIN order; the same settings give the same vehicles.

    ``first_seqs`` gives a vehicle's first event ``seq`` by VIN (a seq state file's), over
    ``first_event_seq``.

    ``numbers``, if given, keeps only the vehicles with those numbers (1..count): a shard of
    the fleet. Vehicle ``i`` is the same whether it is built alone or with all the others.
    """
    city = settings.city
    nodes = sorted(n for n in city.nodes if n != settings.depot and city.neighbours(n))
    random.Random(f"{settings.seed}:start-nodes").shuffle(nodes)
    vehicles: list[SimulatedVehicle] = []
    others = 0
    for i in range(1, settings.count + 1):
        profile = settings.profiles[(i - 1) % len(settings.profiles)]
        if profile is VehicleProfile.DELIVERY_VAN:
            start_node = settings.depot
        else:
            start_node = nodes[others % len(nodes)]
            others += 1
        if numbers is not None and i not in numbers:
            continue
        vin = settings.vin(i)
        own = first_seqs.get(vin) if first_seqs is not None else None
        vehicles.append(
            SimulatedVehicle(
                vin,
                profile,
                city,
                random.Random(f"{settings.seed}:{i}"),
                start_node,
                start_ms=start_ms,
                first_event_seq=first_event_seq if own is None else own.next_event_seq,
            )
        )
    return vehicles


def summarize(units: Sequence[SimulatedUnit]) -> dict[str, Any]:
    """Fleet totals plus every unit's counters (JSON-ready)."""
    stats = [u.stats() for u in units]
    keys = (
        "samples",
        "published",
        "acked",
        "buffered",
        "dropped",
        "pending",
        "lost_in_flight",
        "batches",
        "events",
        "events_dropped",
        "connects",
        "commands_received",
        "commands_ignored",
        "commands_duplicate",
        "commands_rejected",
        "commands_accepted",
        "commands_succeeded",
        "commands_failed",
        "commands_answered",
    )
    totals: dict[str, Any] = {
        "vehicles": len(stats),
        "connected": sum(s.connected for s in stats),
    }
    for key in keys:
        totals[key] = sum(getattr(s, key) for s in stats)
    totals["slow_units"] = [
        u.vin for u in units if u.settings.answers_commands and u.settings.command_delay_s > 0
    ]
    totals["silent_units"] = [u.vin for u in units if not u.settings.answers_commands]
    totals["units"] = {s.vin: s.as_dict() for s in stats}
    return totals


async def _report_progress(
    units: Sequence[SimulatedUnit],
    stop: asyncio.Event,
    interval_s: float,
    on_progress: Callable[[dict[str, Any]], None],
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        if stop.is_set():
            return
        on_progress(summarize(units))


async def run_fleet(
    settings: FleetSettings,
    unit_settings: UnitSettings,
    stop: asyncio.Event,
    *,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
    per_vin: PerVin | None = None,
) -> dict[str, Any]:
    """Run one unit per vehicle until ``stop`` is set; return :func:`summarize`'s dict.

    Each unit runs with ``unit_settings`` adjusted for its command role and by ``per_vin``
    (:func:`build_unit_settings`: slow or silent units, own credentials). ``on_progress``
    gets the same dict every ``settings.progress_interval_s`` seconds. If a unit fails for
    good (:class:`~device_sim.unit.UnitConnectError`: the broker refused it), the others are
    cancelled (so the broker publishes their Wills) and the error is raised in an
    ``ExceptionGroup``.
    """
    start_ms = clock_ms() if settings.start_ms is None else settings.start_ms
    first_seq = start_ms if settings.first_seq is None else settings.first_seq
    vehicles = build_vehicles(settings, start_ms=start_ms, first_event_seq=first_seq)
    per_unit = build_unit_settings(settings, unit_settings, per_vin=per_vin)
    units = [
        SimulatedUnit(v, s, first_seq=first_seq, clock_ms=clock_ms)
        for v, s in zip(vehicles, per_unit, strict=True)
    ]
    async with asyncio.TaskGroup() as group:
        for unit in units:
            group.create_task(unit.run(stop), name=f"unit-{unit.vin}")
        if on_progress is not None:
            group.create_task(
                _report_progress(units, stop, settings.progress_interval_s, on_progress)
            )
    return summarize(units)


# --- the fleet behind the command line ----------------------------------------------------------

#: new connections per second while a fleet comes up, unless told otherwise
DEFAULT_CONNECT_RATE: Final = 500.0
_SHARD_PROGRESS_S: Final = 1.0
#: full per-unit counters (``stats()``) are gathered at most this often for progress
_FULL_STATS_EVERY_S: Final = 2.0
#: seconds between two checks whether a unit used half of its reserved seq block: at
#: RESERVED_BLOCK // 2 numbers per check, safe below 100 samples per second per unit
_SEQ_STATE_CHECK_S: Final = 0.5


class _AckTracker:
    """Counts QoS 1 PUBLISHes and PUBACKs of many units and times publish -> PUBACK.

    A unit counts PUBACKs through the in-flight store it hands gmqtt (see
    :class:`device_sim.unit._InflightStore`), but keeps no timestamps. This wraps that store's
    ``push_message`` / ``remove_message_by_mid`` / ``clear`` on each unit instance (the unit
    itself is not changed). If a unit has no such store (its internals changed), :meth:`attach`
    returns False and the fleet reports the latency as unknown rather than wrong.
    """

    def __init__(self) -> None:
        self.histogram = LatencyHistogram()
        self.published = 0
        self.acked = 0

    def attach(self, unit: SimulatedUnit) -> bool:
        store = getattr(unit, "_store", None)
        push = getattr(store, "push_message", None)
        remove = getattr(store, "remove_message_by_mid", None)
        clear = getattr(store, "clear", None)
        if not (callable(push) and callable(remove) and callable(clear)):
            return False
        sent: dict[int, float] = {}
        clock = time.perf_counter
        add = self.histogram.add

        def push_message(mid: int, raw_package: bytes) -> None:
            if mid not in sent:  # a replay after a reconnect keeps the first send time
                sent[mid] = clock()
                self.published += 1
            push(mid, raw_package)

        def remove_message_by_mid(mid: int) -> None:
            started = sent.pop(mid, None)
            if started is not None:
                self.acked += 1
                add((clock() - started) * 1000.0)
            remove(mid)

        def clear_all() -> None:
            sent.clear()
            clear()

        setattr(store, "push_message", push_message)  # noqa: B010
        setattr(store, "remove_message_by_mid", remove_message_by_mid)  # noqa: B010
        setattr(store, "clear", clear_all)  # noqa: B010
        return True


class FleetRun:
    """The fleet (or one shard of it) that the command line runs: one
    :class:`SimulatedUnit` per vehicle, brought up at ``connect_rate`` connections per
    second; a unit the broker refuses for good stops the whole fleet cleanly."""

    def __init__(
        self,
        settings: FleetSettings,
        unit_settings: UnitSettings,
        *,
        connect_rate: float = DEFAULT_CONNECT_RATE,
        shard: Shard | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        per_vin: PerVin | None = None,
        seq_state: SeqStateFile | None = None,
    ) -> None:
        if not connect_rate > 0:
            raise ValueError(f"connect_rate must be > 0, got {connect_rate}")
        shard = Shard(0, 1) if shard is None else shard
        self.shard = shard
        start_ms = clock_ms() if settings.start_ms is None else settings.start_ms
        first_seq = start_ms if settings.first_seq is None else settings.first_seq
        numbers = shard.numbers(settings.count)
        # a seq state file: each unit continues its own counters (device_sim.seqstate)
        self._seq_state = seq_state
        starts = (
            None
            if seq_state is None
            else {settings.vin(i): seq_state.start(settings.vin(i), first_seq) for i in numbers}
        )
        vehicles = build_vehicles(
            settings,
            start_ms=start_ms,
            first_event_seq=first_seq,
            numbers=set(numbers),
            first_seqs=starts,
        )
        every = build_unit_settings(settings, unit_settings, per_vin=per_vin)
        self.units = [
            SimulatedUnit(
                v,
                every[i - 1],
                first_seq=first_seq if starts is None else starts[v.vin].next_seq,
                clock_ms=clock_ms,
            )
            for v, i in zip(vehicles, numbers, strict=True)
        ]
        self._connect_rate = connect_rate / shard.count
        self._tracker = _AckTracker()
        attached = [self._tracker.attach(u) for u in self.units]  # every unit, no short cut
        self.latency_known = all(attached)
        self.started = 0
        self.rejected = 0
        #: units whose session another client took over (see device_sim.unit)
        self.taken_over = 0
        self.error: str | None = None
        self.connected_peak = 0
        self._full: dict[str, int] = {}
        self._full_at = -math.inf
        self._steady_from: tuple[float, float, int] | None = None
        self._steady_to: tuple[float, float, int] | None = None

    def _mark(self) -> tuple[float, float, int]:
        return time.perf_counter(), process_usage()[0], self._tracker.published

    def counters(self) -> dict[str, Counters]:
        """Every unit's next sample and event ``seq``."""
        return {u.vin: Counters(u.next_seq, u.vehicle.next_event_seq) for u in self.units}

    async def _keep_seq_state(self, state: SeqStateFile, stop: asyncio.Event) -> None:
        """Renew the reserved blocks before a unit runs out of its block."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_SEQ_STATE_CHECK_S):
                    await stop.wait()
            current = self.counters()
            if state.needs_renewal(current):
                state.reserve(current)

    async def run(self, stop: asyncio.Event) -> None:
        """Start the units at the connect rate, run them until ``stop`` is set (with a seq
        state file: reserve each unit's numbers first, write the exact ones at the end)."""
        state = self._seq_state
        if state is None:
            await self._run(stop)
            return
        state.reserve(self.counters())  # before any unit uses a number
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._keep_seq_state(state, stop), name="seq-state")
                await self._run(stop)
                stop.set()
        finally:
            # every unit has stopped: no number above these was used (a kill -9 never gets
            # here, and the next run continues after the reserved block instead)
            state.close(self.counters())

    async def _run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()

        async def mark_stop() -> None:
            # waits on ``stop`` before any unit does, so it runs first when stop is set,
            # before the units start their clean stop (and publish ``offline``)
            await stop.wait()
            self._steady_to = self._mark()

        async with asyncio.TaskGroup() as group:
            group.create_task(mark_stop(), name="mark-stop")
            await asyncio.sleep(0)
            began = loop.time()
            for k, unit in enumerate(self.units):
                delay = began + k / self._connect_rate - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()
                if stop.is_set():
                    break
                group.create_task(self._run_unit(unit, stop), name=f"unit-{unit.vin}")
                self.started += 1

    async def _run_unit(self, unit: SimulatedUnit, stop: asyncio.Event) -> None:
        try:
            await unit.run(stop)
        except UnitConnectError as exc:
            if isinstance(exc, UnitTakenOver):
                self.taken_over += 1
            else:
                self.rejected += 1
            if self.error is None:
                self.error = str(exc)
                log.error("%s; stopping the fleet", exc)
            stop.set()

    def connected_now(self) -> int:
        connected = sum(1 for u in self.units if u.connected)
        self.connected_peak = max(self.connected_peak, connected)
        if (
            self._steady_from is None
            and self._steady_to is None
            and self.units
            and connected == len(self.units)
        ):
            self._steady_from = self._mark()
        return connected

    def progress(self, elapsed_s: float) -> dict[str, Any]:
        """A cheap snapshot for the progress display (the full per-unit counters are
        gathered at most every couple of seconds)."""
        connected = self.connected_now()
        now = time.monotonic()
        if now - self._full_at >= _FULL_STATS_EVERY_S:
            self._full_at = now
            stats = [u.stats() for u in self.units]
            self._full = {
                "buffered": sum(s.pending for s in stats),
                # a reconnect follows a dropped link (a broker restart, a coverage gap):
                # counted apart, not as an error (decision 0054)
                "reconnects": sum(max(0, s.connects - 1) for s in stats),
                "errors": sum(s.dropped for s in stats),
                "commands_received": sum(s.commands_received for s in stats),
                "commands_answered": sum(s.commands_answered for s in stats),
            }
        return {
            "elapsed_s": round(elapsed_s, 3),
            "vehicles": len(self.units),
            "started": self.started,
            "connected": connected,
            "published": self._tracker.published,
            "acknowledged": self._tracker.acked,
            "rejected_by_broker": self.rejected,
            "taken_over": self.taken_over,
            **self._full,
            "errors": self._full.get("errors", 0) + self.rejected + self.taken_over,
        }

    def steady(self, interval_s: float) -> dict[str, Any] | None:
        """From the moment every unit was connected until the stop: seconds, messages
        published, rate (and the target rate), CPU."""
        if self._steady_from is None or self._steady_to is None:
            return None
        (t0, cpu0, pub0), (t1, cpu1, pub1) = self._steady_from, self._steady_to
        seconds = max(t1 - t0, 1e-9)
        return {
            "seconds": round(seconds, 3),
            "messages": pub1 - pub0,
            "messages_per_s": round((pub1 - pub0) / seconds, 2),
            "target_messages_per_s": round(len(self.units) / interval_s, 2),
            "cpu_s": round(cpu1 - cpu0, 3),
            "cpu_percent": round(100.0 * (cpu1 - cpu0) / seconds, 1),
        }

    def summary(self, duration_s: float, *, interval_s: float, details: bool) -> dict[str, Any]:
        """The run's summary (JSON-ready); ``details``: with every unit's counters."""
        self.connected_now()
        totals = summarize(self.units)
        units: dict[str, dict[str, Any]] = totals.pop("units")
        samples_published = totals.pop("published")
        acked = totals.pop("acked")
        messages = sum(int(u["messages"]) for u in units.values())
        cpu_s, rss_mb = process_usage()
        out: dict[str, Any] = {
            "vehicles": len(self.units),
            "rate_per_unit": round(1.0 / interval_s, 6),
            "interval_s": interval_s,
            "duration_s": round(duration_s, 3),
            "connected": sum(1 for u in units.values() if u["connects"] > 0),
            "connected_peak": self.connected_peak,
            "published": messages,
            "acknowledged": acked,
            "acked": acked,
            "rejected_by_broker": self.rejected,
            "taken_over": self.taken_over,
            "error": self.error,
            "samples_published": samples_published,
            **{k: v for k, v in totals.items() if k not in {"vehicles", "connected"}},
            "reconnects": sum(max(0, int(u["connects"]) - 1) for u in units.values()),
            "latency_ms": self._tracker.histogram.as_json() if self.latency_known else None,
            "latency_histogram": self._tracker.histogram.to_wire() if self.latency_known else None,
            "steady": self.steady(interval_s),
            "processes": [
                {
                    "pid": os.getpid(),
                    "shard": str(self.shard),
                    "units": len(self.units),
                    "cpu_s": round(cpu_s, 3),
                    "max_rss_mb": round(rss_mb, 1),
                }
            ],
            "vins": list(units),
        }
        if details:
            out["units"] = units
        return out


# --- command line -------------------------------------------------------------------------------


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``mqtt://`` or ``mqtts://`` URL (see :func:`parse_broker_url`,
    which also says whether it is TLS)."""
    address = parse_broker_url(url)
    return address.host, address.port


def _number(text: str, ok: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not ok(value):  # NaN fails every comparison, so it is refused too
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, lambda v: 0 < v < math.inf, "a number > 0")


def _non_negative_float(text: str) -> float:
    return _number(text, lambda v: 0 <= v < math.inf, "a number >= 0")


def _share(text: str) -> float:
    return _number(text, lambda v: 0.0 <= v <= 1.0, "a share from 0 to 1")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _procs(text: str) -> int:
    if text.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        return _count(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number >= 1 or 'auto', got {text!r}"
        ) from None


def parse_shard(text: str) -> Shard:
    """``I/N`` (0 <= I < N) into a :class:`Shard`."""
    index, sep, count = text.partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if not sep or shard is None:
        raise ValueError(f"invalid shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return shard


def _vin_prefix(text: str) -> str:
    try:
        make_vin(1, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_DESCRIPTION: Final = (
    "Simulated in-car units for the telematics gateway (also: python -m device_sim).\n"
    "Every vehicle drives around central Munich and reports over MQTT 5 as a real\n"
    "unit would, each over its own connection: client id = VIN, persistent session,\n"
    "a retained online status with an offline Last Will, QoS 1 telemetry on\n"
    "v1/vehicles/{vin}/telemetry and events on v1/vehicles/{vin}/events, and\n"
    "store-and-forward: samples taken while the broker is unreachable are kept and\n"
    "uploaded in batches after the reconnect. Every unit answers remote commands on\n"
    "v1/vehicles/{vin}/commands (accepted or rejected, then succeeded or failed). The\n"
    "same --seed gives the same vehicles and the same driving.\n"
    "\n"
    "Against a gateway that gives every vehicle its own broker login (user name = VIN,\n"
    "its own password, an ACL for its own topics), pass the credentials file that\n"
    "provisioning writes (--credentials): each unit then logs in as its own vehicle,\n"
    "over TLS with its own client certificate if you like (--tls-ca, --tls-cert-dir).\n"
    "\n"
    "To replay a scenario file (scripted drives, faults and events, the same stream on\n"
    "every run): telematics sim scenario FILE (telematics sim scenario --help)."
)

_EPILOG: Final = (
    "examples:\n"
    "  telematics sim --credentials units.json        every provisioned vehicle, each\n"
    "                                                 with its own login, at the\n"
    "                                                 broker the file names\n"
    "  telematics sim --mqtt-url mqtt://127.0.0.1:1883\n"
    "                                                 5 vehicles on an open local broker\n"
    "  telematics sim --mqtt-url mqtt://host:1883 --vehicles 5000 --rate 0.2\n"
    "                                                 5,000 units, one sample each 5 s\n"
    "  telematics sim --vehicles 10000 --rate 0.2 --procs 2 --mqtt-url mqtt://host:1883\n"
    "  telematics sim --credentials units.json --rate 2 --duration 60 --json > summary.json\n"
    "  telematics sim --credentials units.json --slow-share 0.2 --silent-share 0.1\n"
    "                                                 some slow units, some that never\n"
    "                                                 answer\n"
    "  telematics sim --credentials units.json --vehicles 3\n"
    "                                                 WSMZZZ00000000001..3, which must\n"
    "                                                 be provisioned\n"
    "  telematics sim --credentials units.json --mqtt-url mqtts://127.0.0.1:8883 \\\n"
    "      --tls-ca ca.pem --tls-cert-dir certs/      TLS, a client certificate per VIN\n"
    "  telematics sim --vehicles 50 --vin-prefix WSMNEW --list-vins\n"
    "                                                 the VINs to provision (telematics\n"
    "                                                 vehicle add $(...) ...)\n"
    "  telematics sim scenario device_sim/scenarios/munich-morning.toml --dump\n"
    "                                                 a scenario file's stream, without a\n"
    "                                                 broker (telematics sim scenario --help)\n"
    "\n"
    "credentials file (--credentials, written by provisioning; mode 0600):\n"
    '  {"format": "telematics-unit-credentials/1",\n'
    '   "broker": {"url": "mqtt://127.0.0.1:1884"},            optional\n'
    '   "gateway_public_key": "-----BEGIN PUBLIC KEY-----...",  optional\n'
    '   "vehicles": [{"vin": "...", "mqtt_username": "...", "mqtt_password": "...",\n'
    '                 "client_cert": "certs/VIN.crt", "client_key": "certs/VIN.key"}]}\n'
    "  Passwords and certificate paths are optional per vehicle; relative paths are\n"
    "  relative to the file. --mqtt-url and --gateway-public-key, when given, win over\n"
    "  the file; a file without a broker URL needs --mqtt-url. A vehicle must be\n"
    "  provisioned (telematics vehicle add VIN, or POST /v1/vehicles) before it can\n"
    "  log in, and only one process at a time can drive it: the broker allows one\n"
    "  connection per client id (the VIN), so a second simulator with the same\n"
    "  vehicles takes the first one's connections, and the side that loses them stops\n"
    "  with an error that says so.\n"
    "\n"
    "output:\n"
    "  Live progress goes to stderr (a table on a terminal, refreshed twice a second;\n"
    "  a plain line every --progress seconds otherwise): units connected, messages\n"
    "  published and acknowledged, samples buffered, errors (samples dropped from a\n"
    "  full buffer, logins refused, connections taken over), reconnects, publish\n"
    "  rate, commands answered. At the end a one-line summary goes to stderr; with\n"
    "  --json the full summary goes to stdout instead: published, acknowledged,\n"
    "  rejected_by_broker,\n"
    "  taken_over, commands answered, publish->PUBACK latency percentiles, CPU seconds\n"
    "  and peak memory per process (and per 1,000 units, for fleets of 1,000 or more),\n"
    "  every unit's counters for fleets of up to 1,000.\n"
    "\n"
    "exit status:\n"
    "  0 after a normal stop (--duration, Ctrl-C, SIGTERM); 1 when the broker cannot\n"
    "  be reached or refuses the units (bad credentials, not authorised, a TLS\n"
    "  certificate that does not verify), or another client took a unit's session\n"
    "  over (same client id); 2 for bad options (also: a vehicle of the fleet missing\n"
    "  from the credentials file).\n"
    f"\nWith --username the MQTT password, if any, is read from ${PASSWORD_ENV}:\n"
    "passwords never go on a command line, where ps would show them."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telematics sim",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_fleet_options(parser)
    _add_run_options(parser)
    _add_output_options(parser)
    _add_behaviour_options(parser)
    _add_login_options(parser)
    _add_internal_options(parser)
    return parser


def _add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """Options: the broker and which vehicles."""
    parser.add_argument(
        "--mqtt-url",
        default=None,
        metavar="URL",
        help="broker to report to, mqtt://host[:port] (port 1883 if left out) or "
        "mqtts://host[:port] for TLS (port 8883 if left out; needs --tls-ca) (default: the "
        "--credentials file's broker URL; without --credentials, or with a file that names "
        "no broker, --mqtt-url is required: there is no default broker)",
    )
    parser.add_argument(
        "--vehicles",
        type=_count,
        default=None,
        metavar="N",
        help="how many vehicles (units), each with its own MQTT connection, with VINs "
        f"{make_vin(1)}, {make_vin(2)} and so on; with --vins-from-credentials the first N "
        f"of the file's VINs instead (default: {DEFAULT_VEHICLES}; with --credentials, every "
        "vehicle in the file)",
    )
    parser.add_argument(
        "--vin-prefix",
        type=_vin_prefix,
        default=DEFAULT_VIN_PREFIX,
        metavar="PREFIX",
        help="first characters of the simulator's own VINs (1-11 of 0-9 and A-Z without I, "
        "O and Q; the rest is the vehicle's number), e.g. WSMNEW for vehicles besides the "
        f"demo's (default: {DEFAULT_VIN_PREFIX})",
    )
    parser.add_argument(
        "--list-vins",
        action="store_true",
        help="print the fleet's VINs, one per line, and exit without connecting: what to "
        "provision before the units can log in, e.g. telematics vehicle add $(telematics sim "
        "--vehicles 50 --vin-prefix WSMNEW --list-vins) --account 'Demo Fleet' "
        "--credentials-file units.json (default: off)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options: how often, how many processes, how long."""
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="PER_S",
        help="telemetry messages per second per vehicle, e.g. 0.2 for one every 5 s (default: 1)",
    )
    rate.add_argument(
        "--interval",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="seconds between two samples of a vehicle: the same as --rate 1/SECONDS (default: 1)",
    )
    parser.add_argument(
        "--procs",
        type=_procs,
        default=1,
        metavar="N",
        help="spread the vehicles over N processes (one event loop each), for fleets one "
        "process cannot drive; 'auto': one per CPU core (default: 1)",
    )
    parser.add_argument(
        "--connect-rate",
        type=_positive_float,
        default=DEFAULT_CONNECT_RATE,
        metavar="PER_S",
        help="new connections per second while the fleet comes up, so thousands of units "
        f"do not stampede the broker (default: {DEFAULT_CONNECT_RATE:g})",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for the vehicles and their driving (default: 1)"
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--seq-state",
        type=Path,
        default=None,
        metavar="FILE",
        help="keep each unit's seq counters in FILE, as a real unit keeps them in "
        "non-volatile memory: a restarted fleet continues its numbers without a gap; after "
        f"an unclean stop (kill -9) each unit skips at most {RESERVED_BLOCK} numbers (the "
        "block it had reserved in the file); only with --procs 1; telematics up --demo "
        "gives DATA_DIR/simulator/seq-state.json (default: none: the first seq of a run is "
        "its start time in ms)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """Options: what the run prints."""
    parser.add_argument(
        "--json",
        action="store_true",
        help="print only the JSON summary (on stdout): no banner, progress or closing "
        "lines on stderr, only errors (default: off)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no live progress on stderr; the banner and the summary still appear "
        "(default: progress on)",
    )
    parser.add_argument(
        "--progress",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between two progress lines when stderr is not a terminal; on a "
        "terminal the table refreshes twice a second (default: 5)",
    )


def _add_behaviour_options(parser: argparse.ArgumentParser) -> None:
    """Options: how the units behave: buffering, faults, reporting, commands."""
    parser.add_argument(
        "--misbehave",
        action="store_true",
        help="delivery vans run a round of misbehaviour once an hour so that every fleet "
        "rule fires: speeding through the old town, an emergency stop, 22 minutes idling, a "
        "trouble code set and cleared, low fuel, 8 minutes silent (telematics up --demo "
        "turns it on)",
    )
    parser.add_argument(
        "--buffer-limit",
        type=int,
        default=DEFAULT_BUFFER_LIMIT,
        metavar="N",
        help="samples a vehicle keeps while offline; the oldest are dropped beyond it "
        f"(default: {DEFAULT_BUFFER_LIMIT})",
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="KIND=RATE,...",
        help="misbehave on purpose, each fault with a probability per report, e.g. "
        "'malformed_json=0.01,clock_skew=0.05'; kinds: "
        + ", ".join(k.value for k in FaultKind)
        + " (default: none)",
    )
    parser.add_argument(
        "--send-on-change",
        action="store_true",
        help="report only signals that changed (each at most once per --min-signal-interval) "
        "plus a full snapshot every --heartbeat seconds, as real firmware does "
        "(default: every signal in every report)",
    )
    parser.add_argument(
        "--min-signal-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --send-on-change: shortest time between two reports of one signal "
        "(default: 1.0)",
    )
    parser.add_argument(
        "--heartbeat",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --send-on-change: seconds between full snapshots (default: 30)",
    )
    parser.add_argument(
        "--slow-share",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of the vehicles (0-1) with slow actuators: they answer a command "
        "'accepted' at once but 'succeeded' only --slow-delay seconds later, to exercise the "
        "gateway's wait for final results (default: 0)",
    )
    parser.add_argument(
        "--slow-delay",
        type=_non_negative_float,
        default=2.0,
        metavar="SECONDS",
        help="how long a slow vehicle takes to carry out a command (default: 2)",
    )
    parser.add_argument(
        "--silent-share",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of the vehicles (0-1) that receive commands but never answer them (nor "
        "carry them out), to exercise the gateway's command timeouts; the choice of "
        "vehicles follows from --seed (default: 0)",
    )


def _add_login_options(parser: argparse.ArgumentParser) -> None:
    """Options: how the units log in and check commands."""
    parser.add_argument(
        "--username",
        default=None,
        help=f"one MQTT user name for every unit; the password comes from ${PASSWORD_ENV}; "
        "not with --credentials, which gives each unit its own (default: none, anonymous)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        default=None,
        metavar="FILE",
        help="unit credentials file written by provisioning (format below): each unit logs "
        "in with its own VIN's mqtt_username and mqtt_password (and, over TLS, client "
        "certificate); the file's broker URL and gateway public key are used unless "
        "--mqtt-url / --gateway-public-key are given. Every vehicle of the fleet must be in "
        "it. --procs children get the path, never the passwords (default: none)",
    )
    parser.add_argument(
        "--vins-from-credentials",
        action="store_true",
        help="the fleet is the vehicles of the --credentials file (sorted by VIN; the first "
        "N with --vehicles N) instead of the simulator's own VINs; implied by --credentials "
        "without --vehicles (default: off)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="connect over TLS and verify the broker's certificate against this CA (PEM) "
        "only, as provisioned firmware does; needed for mqtts:// URLs, and turns (default: none, "
        "plain TCP)",
    )
    parser.add_argument(
        "--tls-cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --tls-ca: each unit presents the client certificate DIR/VIN.crt with its "
        "key DIR/VIN.key (CN = VIN for a broker with use_identity_as_username); wins over "
        "the --credentials file's client_cert/client_key (default: those, or none)",
    )
    parser.add_argument(
        "--gateway-public-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the gateway's command signing public key (PEM; the API writes it next to its "
        "private key, DATA_DIR/command-signing-key.pem.pub): every unit then refuses a "
        "command that is unsigned or badly signed (bad_signature) or whose counter is not "
        "above the last one it took (replayed) (default: the --credentials file's "
        "gateway_public_key if it has one, else none: commands are not checked)",
    )


def _add_internal_options(parser: argparse.ArgumentParser) -> None:
    """Options: internal (--procs children) and logging."""
    parser.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="internal, used by --procs: run only vehicles I+1, I+1+N, I+1+2N, ... of the "
        "fleet and write JSON lines (progress, then the summary) to stdout (default: all)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: WARNING)",
    )


# --- progress display ---------------------------------------------------------------------------


# --- command line entry point -------------------------------------------------------------------


def _raise_open_file_limit() -> None:
    """One connection is one file descriptor: allow as many as the hard limit permits."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def check_reachable(host: str, port: int, *, timeout_s: float = 5.0) -> str | None:
    """None if a TCP connection to the broker can be opened, else why not."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def unreachable_message(host: str, port: int, why: str, *, tls: bool = False) -> str:
    url = BrokerAddress(host, port, tls).url
    return (
        f"cannot reach the MQTT broker at {url} ({why}); start it, or point --mqtt-url at a "
        "running broker"
    )


@dataclass(frozen=True, slots=True)
class _Options:
    """The validated command line."""

    host: str
    port: int
    unit_settings: UnitSettings
    fleet: FleetSettings
    interval_s: float
    procs: int
    connect_rate: float
    tls: bool = False
    #: each unit's own login (from --credentials and --tls-cert-dir); None: all share one
    per_vin: PerVin | None = None
    credentials: Path | None = None
    seq_state: SeqStateFile | None = None


#: how many VINs an error message lists before it says "and N more"
_LISTED_VINS: Final = 5


def _listed(vins: Sequence[str]) -> str:
    shown = ", ".join(vins[:_LISTED_VINS])
    more = len(vins) - _LISTED_VINS
    return f"{shown} and {more:,} more" if more > 0 else shown


def _broker(args: argparse.Namespace, credentials: UnitCredentials | None) -> BrokerAddress:
    """The broker the units connect to: --mqtt-url, else the credentials file's, else an
    error naming both (decision 0046); checked against the TLS options."""
    if args.tls_cert_dir is not None and args.tls_ca is None:
        raise ValueError(
            "--tls-cert-dir needs --tls-ca: client certificates are presented only over TLS"
        )
    if args.mqtt_url is not None:
        what = f"--mqtt-url {args.mqtt_url}"
        address = parse_broker_url(args.mqtt_url)
    elif credentials is not None and credentials.broker_url is not None:
        what = f"the broker URL {credentials.broker_url} of {args.credentials}"
        try:
            address = parse_broker_url(credentials.broker_url)
        except ValueError as exc:
            raise ValueError(f"{args.credentials}: broker.url: {exc}") from None
    elif credentials is not None:
        # the vehicles were provisioned for some installation's broker; a default port
        # would be a guess (telematics up's own broker is not on 1883)
        raise ValueError(
            f"{args.credentials} does not say which broker its vehicles belong to (no "
            '"broker": {"url": ...}): give --mqtt-url mqtt://host:port, the broker they were '
            "provisioned for (telematics vehicle add --credentials-file writes its URL into "
            "the file)"
        )
    else:
        # no default broker (decision 0046): telematics up's broker (1884) admits only
        # provisioned vehicles, so without logins no default port could work there, and
        # 1883 is often some other, open broker, where the units' messages would be
        # acknowledged and never reach the gateway
        raise ValueError(
            "which broker? Give --credentials FILE, the unit credentials file provisioning "
            "wrote (telematics vehicle add VIN... --credentials-file FILE): its units log in "
            "as their vehicles at the broker URL it names, as telematics up's broker requires; "
            "or --mqtt-url mqtt://host:port for a broker that admits units without a login "
            f"(e.g. {_EXAMPLE_OPEN_URL}; mqtts://host:port with --tls-ca for TLS)"
        )
    if address.tls and args.tls_ca is None:
        raise ValueError(
            f"{what} is TLS (mqtts://) and needs --tls-ca FILE, the CA of the broker's "
            "certificate: like provisioned firmware, the units trust only that CA"
        )
    if not address.tls and args.tls_ca is not None:
        raise ValueError(
            f"--tls-ca asks for TLS but {what} is plain TCP (mqtt://): use --mqtt-url "
            "mqtts://host[:port] (the broker's TLS listener)"
        )
    return address


def _fleet_vins(
    args: argparse.Namespace, credentials: UnitCredentials | None
) -> tuple[int, tuple[str, ...] | None]:
    """How many vehicles, and their VINs when they come from the credentials file (None:
    ``make_vin``). Every VIN of the fleet must be in the file."""
    if credentials is None:
        if args.vins_from_credentials:
            raise ValueError("--vins-from-credentials needs --credentials FILE")
        return (DEFAULT_VEHICLES if args.vehicles is None else args.vehicles), None
    if args.vins_from_credentials or args.vehicles is None:
        provisioned = sorted(credentials.vehicles)
        if not provisioned:
            raise ValueError(
                f"{args.credentials} has no vehicles: provision some first (telematics vehicle "
                "add VIN, or POST /v1/vehicles) and write their credentials to it"
            )
        count = len(provisioned) if args.vehicles is None else args.vehicles
        if count > len(provisioned):
            raise ValueError(
                f"--vehicles {count} with --vins-from-credentials, but {args.credentials} has "
                f"only {len(provisioned)} vehicle(s): provision more (telematics vehicle add "
                f"VIN, or POST /v1/vehicles) or run --vehicles {len(provisioned)}"
            )
        return count, tuple(provisioned[:count])
    count = args.vehicles
    own = fleet_vins(count, vin_prefix=args.vin_prefix)
    missing = [vin for vin in own if vin not in credentials.vehicles]
    if missing:
        raise ValueError(
            f"{len(missing):,} vehicle(s) of the fleet (--vehicles {count}) are not in "
            f"{args.credentials}, so the broker would refuse them: {_listed(missing)}. "
            "Provision them first (telematics vehicle add VIN, or POST /v1/vehicles with "
            '{"vin": ...}) and put their credentials in the file, or run only the vehicles '
            "the file has (leave out --vehicles, or add --vins-from-credentials)"
        )
    return count, None


def _per_vin(
    args: argparse.Namespace, credentials: UnitCredentials | None, vins: Sequence[str]
) -> PerVin | None:
    """Each unit's own login (credentials file, --tls-cert-dir), after checking that every
    certificate file the fleet needs is there (a unit would otherwise fail only when its turn
    to connect comes)."""
    cert_dir: Path | None = args.tls_cert_dir
    if credentials is None and cert_dir is None:
        return None
    tls = args.tls_ca is not None
    needed: list[Path] = []
    for vin in vins:
        if cert_dir is not None:
            needed.extend(_cert_dir_files(cert_dir, vin))
        elif tls and credentials is not None:
            entry = credentials.vehicles[vin]
            needed.extend(p for p in (entry.client_cert, entry.client_key) if p is not None)
    absent = [str(p) for p in needed if not p.is_file()]
    if absent:
        where = f"--tls-cert-dir {cert_dir}" if cert_dir is not None else args.credentials
        raise ValueError(
            f"{len(absent):,} client certificate or key file(s) named by {where} do not "
            f"exist: {_listed(absent)}"
        )
    if credentials is None:
        assert cert_dir is not None

        def certificate_only(vin: str, settings: UnitSettings) -> UnitSettings:
            cert, key = _cert_dir_files(cert_dir, vin)
            return replace(settings, tls_cert_file=cert, tls_key_file=key)

        return certificate_only
    entries = credentials.vehicles

    def own_login(vin: str, settings: UnitSettings) -> UnitSettings:
        return with_credential(settings, entries[vin], cert_dir=cert_dir)

    return own_login


def _report_interval(args: argparse.Namespace) -> float:
    """Seconds between two samples: ``--interval``, else 1 / ``--rate``, else 1."""
    if args.interval is not None:
        return float(args.interval)
    if args.rate is not None:
        return 1.0 / float(args.rate)
    return 1.0


def _seq_state(args: argparse.Namespace) -> SeqStateFile | None:
    """The ``--seq-state`` file, read (one process keeps it: not with ``--procs`` > 1)."""
    if args.seq_state is None:
        return None
    if args.procs != 1 or args.shard is not None:
        raise ValueError("--seq-state needs --procs 1: one process keeps the file of its units")
    return SeqStateFile(args.seq_state)


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> _Options:
    """Validate the command line and resolve its defaults. ``args`` is updated with what was
    resolved (broker URL, number of vehicles, where the VINs come from), so that ``--procs``
    children get exactly the same fleet."""
    try:
        if args.credentials is not None and args.username is not None:
            raise ValueError(
                "--credentials and --username cannot be combined: with --credentials every "
                "unit logs in with its own VIN's user name and password from the file; "
                f"--username (with ${PASSWORD_ENV}) is one login shared by all units"
            )
        credentials = None if args.credentials is None else load_credentials(args.credentials)
        if args.tls_ca is not None and not args.tls_ca.is_file():
            raise ValueError(f"--tls-ca {args.tls_ca}: no such file")
        if args.tls_cert_dir is not None and not args.tls_cert_dir.is_dir():
            raise ValueError(f"--tls-cert-dir {args.tls_cert_dir}: no such directory")
        count, vins = _fleet_vins(args, credentials)
        faults = FaultRates.parse(args.faults) if args.faults else FaultRates()
        # the broker last: a missing --mqtt-url is no reason to hide a mistake in what was typed
        address = _broker(args, credentials)
        interval = _report_interval(args)
        password = os.environ.get(PASSWORD_ENV) if args.username is not None else None
        if args.gateway_public_key is not None:
            public_key: bytes | None = args.gateway_public_key.read_bytes()
        elif credentials is not None and credentials.gateway_public_key_pem is not None:
            public_key = credentials.gateway_public_key_pem
            try:
                load_public_key_pem(public_key)
            except ValueError as exc:
                raise ValueError(f"{args.credentials}: gateway_public_key: {exc}") from None
        else:
            public_key = None
        unit_settings = UnitSettings(
            host=address.host,
            port=address.port,
            username=args.username,
            password=password,
            tls_ca_file=args.tls_ca,
            report_interval_s=interval,
            buffer_limit=args.buffer_limit,
            faults=faults,
            send_on_change=args.send_on_change,
            min_signal_interval_s=args.min_signal_interval,
            heartbeat_full_s=args.heartbeat,
            gateway_public_key=public_key,
        )
        fleet = FleetSettings(
            count=count,
            seed=args.seed,
            vin_prefix=args.vin_prefix,
            vins=vins,
            progress_interval_s=args.progress,
            slow_share=args.slow_share,
            slow_delay_s=args.slow_delay,
            misbehave=args.misbehave,
            silent_share=args.silent_share,
        )
        if args.shard is not None and args.shard.count > count:
            raise ValueError(f"--shard {args.shard} needs at least {args.shard.count} vehicles")
        per_vin = _per_vin(args, credentials, fleet.all_vins())
        seq_state = _seq_state(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    args.mqtt_url = address.url
    args.vehicles = count
    args.vins_from_credentials = vins is not None
    procs = 1 if args.shard is not None else min(args.procs, count)
    return _Options(
        address.host,
        address.port,
        unit_settings,
        fleet,
        interval,
        procs,
        args.connect_rate,
        tls=address.tls,
        per_vin=per_vin,
        credentials=args.credentials,
        seq_state=seq_state,
    )


class _GmqttTeardownNoise(logging.Filter):
    """Drops what asyncio logs when gmqtt trips over a connection it is tearing down.

    When a fleet stops while units are still connecting (the broker refused one of them),
    gmqtt 0.8's protocol objects get callbacks after their connection object is gone and
    raise AttributeError inside asyncio callbacks and tasks; asyncio then logs each with a
    traceback. Nothing is lost (those connections are being abandoned anyway), and the
    units report every outcome themselves, so these records only bury the one line that
    says what to fix. Any other error asyncio logs goes through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, AttributeError) or exc.__traceback__ is None:
            return True
        tb = exc.__traceback__
        while tb.tb_next is not None:
            tb = tb.tb_next
        return "gmqtt" not in tb.tb_frame.f_code.co_filename


def _setup_logging(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # gmqtt logs every lost or refused connection (with a traceback); the units report each
    # outcome in one line instead
    gmqtt_level = logging.DEBUG if logging.getLogger().level <= logging.DEBUG else logging.CRITICAL
    logging.getLogger("gmqtt").setLevel(gmqtt_level)
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _GmqttTeardownNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_GmqttTeardownNoise())


def _install_stop_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        handled.append(sig)
    return handled


def _remove_stop_handlers(handled: Sequence[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in handled:
        loop.remove_signal_handler(sig)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while the block runs. Callers span the run *and* the
    report after it: a second signal (the SIGTERM a supervisor sends after a Ctrl-C that
    reached everyone) must not kill the process before it has printed how the run went."""
    handled = _install_stop_handlers(stop)
    try:
        yield
    finally:
        _remove_stop_handlers(handled)


def banner(args: argparse.Namespace, opts: _Options) -> str:
    roles = command_roles(opts.fleet)
    slow, silent = roles.count(CommandRole.SLOW), roles.count(CommandRole.SILENT)
    if opts.credentials is not None:
        login = f", each logged in as itself ({opts.credentials})"
    elif opts.per_vin is not None:
        login = ", each with its own client certificate"
    else:
        login = ""
    url = BrokerAddress(opts.host, opts.port, opts.tls).url
    return (
        f"{opts.fleet.count} vehicle(s) reporting to {url}{login} at "
        f"{1 / opts.interval_s:g} msg/s each (every {opts.interval_s:g} s), "
        f"{opts.procs} process(es), connecting {opts.connect_rate:g}/s, seed {opts.fleet.seed}; "
        f"{slow} slow, {silent} silent on commands; Ctrl-C stops"
    )


async def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``telematics sim`` / ``python -m device_sim``: run a fleet until Ctrl-C, SIGTERM or
    ``--duration``; with ``--procs N`` over N child processes (:mod:`device_sim.procs`).

    Returns the exit status: 0 after a normal stop, 1 if the broker cannot be reached or
    refused the units.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    out = sys.stdout if out is None else out
    if args.list_vins:
        return _list_vins(parser, args, out)
    opts = _options(parser, args)
    _setup_logging(args.log_level)
    _raise_open_file_limit()

    why = await check_reachable(opts.host, opts.port)
    if why is not None:
        print(
            f"device_sim: error: {unreachable_message(opts.host, opts.port, why, tls=opts.tls)}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    say(args, banner(args, opts))

    stop = asyncio.Event()
    with stop_on_signals(stop):
        if opts.procs > 1:
            return await run_procs(args, opts.procs, out=out, stop=stop)
        if args.shard is not None:
            return await _run_shard(args, opts, out, stop)
        return await _run_single(args, opts, out, stop)


def _list_vins(parser: argparse.ArgumentParser, args: argparse.Namespace, out: TextIO) -> int:
    """``--list-vins``: the fleet's VINs, one per line, without a broker."""
    try:
        credentials = None if args.credentials is None else load_credentials(args.credentials)
        count, vins = _fleet_vins(args, credentials)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    fleet = FleetSettings(count=count, vins=vins, vin_prefix=args.vin_prefix)
    out.write("".join(f"{vin}\n" for vin in fleet.all_vins()))
    out.flush()
    return 0


async def _run_fleet_cli(
    run: FleetRun,
    stop: asyncio.Event,
    interval_s: float,
    duration_s: float | None,
    on_tick: Callable[[dict[str, Any]], None],
) -> float:
    """Run ``run`` until ``stop`` (set by the caller's :func:`stop_on_signals`, or at
    ``duration_s``); call ``on_tick`` with a progress snapshot every ``interval_s``; return
    the run's length in seconds."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(duration_s, stop.set) if duration_s is not None else None
    started = loop.time()

    async def ticker() -> None:
        # connections are sampled often (peak, and when all are up); progress less often
        sample_s = min(interval_s, LIVE_REFRESH_S)
        next_tick = loop.time() + interval_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sample_s):
                    await stop.wait()
            if stop.is_set() or loop.time() >= next_tick:
                next_tick += interval_s
                on_tick(run.progress(loop.time() - started))
            else:
                run.connected_now()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(ticker(), name="progress")
            await run.run(stop)
    finally:
        if timer is not None:
            timer.cancel()
    return loop.time() - started


async def _run_single(
    args: argparse.Namespace, opts: _Options, out: TextIO, stop: asyncio.Event
) -> int:
    display = ProgressDisplay(
        ProgressDisplay.choose(quiet=args.json or args.no_progress, stream=sys.stderr),
        interval_s=args.progress,
        title=f"telematics sim: {opts.fleet.count:,} units",
    )
    run = FleetRun(
        opts.fleet,
        opts.unit_settings,
        connect_rate=opts.connect_rate,
        per_vin=opts.per_vin,
        seq_state=opts.seq_state,
    )
    display.start()
    try:
        duration = await _run_fleet_cli(
            run, stop, display.interval_s, args.duration, display.update
        )
    finally:
        display.stop()
    summary = run.summary(
        duration, interval_s=opts.interval_s, details=opts.fleet.count <= UNIT_DETAIL_LIMIT
    )
    summary["procs"] = 1
    summary["resources"] = resources_summary(
        summary.pop("processes"), summary["vehicles"], duration
    )
    summary.pop("latency_histogram", None)
    summary.pop("vins", None)
    return report(summary, args, out)


async def _run_shard(
    args: argparse.Namespace, opts: _Options, out: TextIO, stop: asyncio.Event
) -> int:
    """A child of ``--procs``: JSON lines on stdout, ``{"progress": ...}`` every second and
    ``{"summary": ...}`` at the end."""
    shard: Shard = args.shard
    run = FleetRun(
        opts.fleet,
        opts.unit_settings,
        connect_rate=opts.connect_rate,
        shard=shard,
        per_vin=opts.per_vin,
    )

    def emit(progress: dict[str, Any]) -> None:
        print(json.dumps({"progress": progress}), file=out, flush=True)

    duration = await _run_fleet_cli(run, stop, _SHARD_PROGRESS_S, args.duration, emit)
    summary = run.summary(
        duration, interval_s=opts.interval_s, details=opts.fleet.count <= UNIT_DETAIL_LIMIT
    )
    summary["shard"] = str(shard)
    print(json.dumps({"summary": summary}), file=out, flush=True)
    return 1 if summary["rejected_by_broker"] or summary["taken_over"] else 0
