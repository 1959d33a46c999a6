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

Remote commands
    Every unit answers the commands the gateway sends it (see :mod:`device_sim.unit`). To
    exercise a gateway's handling of slow and unresponsive vehicles, a share of the units
    can be *slow* (``slow_delay_s`` between ``accepted`` and ``succeeded``) and another share
    *silent* (they receive commands but never answer). Which units are chosen follows from
    the seed alone (:func:`command_roles`): ``round(share * count)`` of each, never both.

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
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, TextIO
from urllib.parse import urlsplit

from device_sim.city import DEPOT, MUNICH, RoadNetwork
from device_sim.unit import (
    DEFAULT_BUFFER_LIMIT,
    SimulatedUnit,
    UnitConnectError,
    UnitSettings,
    wall_clock_ms,
)
from device_sim.vehicle import SimulatedVehicle, VehicleProfile, make_vin

__all__ = [
    "DEFAULT_MQTT_URL",
    "DEFAULT_PROFILES",
    "CommandRole",
    "FleetSettings",
    "build_parser",
    "build_unit_settings",
    "build_vehicles",
    "command_roles",
    "main",
    "parse_mqtt_url",
    "run_fleet",
    "summarize",
]

log = logging.getLogger(__name__)

DEFAULT_MQTT_URL: Final = "mqtt://127.0.0.1:1883"

#: vehicle i (1-based) gets DEFAULT_PROFILES[(i - 1) % 3]: a mixed fleet from three vehicles on
DEFAULT_PROFILES: Final = (
    VehicleProfile.ELECTRIC_CAR,
    VehicleProfile.COMBUSTION_SUV,
    VehicleProfile.DELIVERY_VAN,
)

#: environment variable with the MQTT password (a command-line argument would show in ps)
PASSWORD_ENV: Final = "DEVICE_SIM_MQTT_PASSWORD"


@dataclass(frozen=True, kw_only=True, slots=True)
class FleetSettings:
    """Which vehicles a fleet has. Vehicle ``i`` (1..count) gets VIN ``make_vin(i,
    vin_prefix)``, profile ``profiles[(i - 1) % len(profiles)]`` and its own
    ``random.Random(f"{seed}:{i}")``. Delivery vans start at ``depot``; the other vehicles
    start at distinct nodes of ``city`` (drawn with the seed; reused only when there are
    more vehicles than nodes)."""

    count: int = 5
    seed: int = 1
    profiles: tuple[VehicleProfile, ...] = DEFAULT_PROFILES
    city: RoadNetwork = MUNICH
    depot: str = DEPOT
    vin_prefix: str = "WSMZZZ"
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

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if not self.profiles:
            raise ValueError("profiles must name at least one vehicle profile")
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


def build_unit_settings(settings: FleetSettings, base: UnitSettings) -> list[UnitSettings]:
    """``base`` adjusted per unit for its :func:`command_roles` role, in VIN order."""
    out: list[UnitSettings] = []
    for role in command_roles(settings):
        if role is CommandRole.SLOW:
            out.append(replace(base, command_delay_s=settings.slow_delay_s))
        elif role is CommandRole.SILENT:
            out.append(replace(base, answers_commands=False))
        else:
            out.append(base)
    return out


def build_vehicles(
    settings: FleetSettings, *, start_ms: int, first_event_seq: int = 0
) -> list[SimulatedVehicle]:
    """The fleet's vehicles, in VIN order; the same settings give the same vehicles."""
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
        vehicles.append(
            SimulatedVehicle(
                make_vin(i, settings.vin_prefix),
                profile,
                city,
                random.Random(f"{settings.seed}:{i}"),
                start_node,
                start_ms=start_ms,
                first_event_seq=first_event_seq,
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
) -> dict[str, Any]:
    """Run one unit per vehicle until ``stop`` is set; return :func:`summarize`'s dict.

    Each unit runs with ``unit_settings`` adjusted for its command role
    (:func:`build_unit_settings`: slow or silent units). ``on_progress`` gets the same dict
    every ``settings.progress_interval_s`` seconds. If a
    unit fails for good (:class:`~device_sim.unit.UnitConnectError`: the broker refused it),
    the others are cancelled (so the broker publishes their Wills) and the error is raised
    in an ``ExceptionGroup``.
    """
    start_ms = clock_ms() if settings.start_ms is None else settings.start_ms
    first_seq = start_ms if settings.first_seq is None else settings.first_seq
    vehicles = build_vehicles(settings, start_ms=start_ms, first_event_seq=first_seq)
    per_unit = build_unit_settings(settings, unit_settings)
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


# --- command line -------------------------------------------------------------------------------


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Split ``mqtt://host[:port]`` into ``(host, port)`` (port 1883 by default)."""
    expected = f"expected mqtt://host[:port], e.g. {DEFAULT_MQTT_URL}"
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "mqtt":
        raise ValueError(f"invalid MQTT URL {url!r}: {expected} (TLS is not supported)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"invalid MQTT URL {url!r}: pass credentials with --username; {expected}")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"invalid MQTT URL {url!r}: no path or query allowed; {expected}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or not parts.hostname:
        raise ValueError(f"invalid MQTT URL {url!r}: {expected}")
    return parts.hostname, 1883 if port is None else port


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m device_sim",
        description=(
            "Simulated in-car units for the telematics gateway. Every vehicle drives around\n"
            "central Munich and reports over MQTT 5 as a real unit would: client id = VIN,\n"
            "persistent session, a retained online status with an offline Last Will, QoS 1\n"
            "telemetry on v1/vehicles/{vin}/telemetry and events on v1/vehicles/{vin}/events,\n"
            "and store-and-forward: samples taken while the broker is unreachable are kept\n"
            "and uploaded in batches after the reconnect. Every unit answers remote commands\n"
            "on v1/vehicles/{vin}/commands (accepted or rejected, then succeeded or failed)\n"
            "and the car's state changes accordingly. The same --seed gives the same\n"
            "vehicles and the same driving."
        ),
        epilog=(
            "examples:\n"
            "  python -m device_sim                          5 vehicles on a local broker\n"
            "  python -m device_sim --vehicles 20 --interval 0.5 --duration 60\n"
            "  python -m device_sim --vehicles 10 --slow-share 0.2 --silent-share 0.1\n"
            "                                                2 slow units, 1 that never answers\n"
            f"\nA progress line goes to stderr every few seconds; a JSON summary to stdout at "
            f"the end. The MQTT password, if any, is read from ${PASSWORD_ENV}."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mqtt-url",
        default=DEFAULT_MQTT_URL,
        metavar="URL",
        help=f"broker to report to, mqtt://host[:port] (default: {DEFAULT_MQTT_URL})",
    )
    parser.add_argument(
        "--vehicles", type=_count, default=5, metavar="N", help="how many vehicles (default: 5)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed for the vehicles and their driving (default: 1)"
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two samples of a vehicle (default: 1.0)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C or SIGTERM)",
    )
    parser.add_argument(
        "--progress",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between two progress lines (default: 5)",
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
    parser.add_argument("--username", default=None, help="MQTT user name (default: none)")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: WARNING)",
    )
    return parser


def _progress_line(summary: dict[str, Any], elapsed_s: float) -> str:
    return (
        f"device_sim: {elapsed_s:5.0f} s  {summary['connected']}/{summary['vehicles']} connected"
        f"  {summary['published']} samples published ({summary['acked']} PUBACKs)"
        f"  {summary['pending']} buffered now  {summary['dropped']} dropped"
        f"  {summary['events']} events"
        f"  {summary['commands_answered']}/{summary['commands_received']} commands answered"
    )


async def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``python -m device_sim``: run a fleet until Ctrl-C, SIGTERM or ``--duration``.

    Returns the exit status: 0 after a normal stop, 1 if the broker refused the units.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_mqtt_url(args.mqtt_url)
        password = os.environ.get(PASSWORD_ENV) if args.username is not None else None
        unit_settings = UnitSettings(
            host=host,
            port=port,
            username=args.username,
            password=password,
            report_interval_s=args.interval,
            buffer_limit=args.buffer_limit,
        )
        fleet = FleetSettings(
            count=args.vehicles,
            seed=args.seed,
            progress_interval_s=args.progress,
            slow_share=args.slow_share,
            slow_delay_s=args.slow_delay,
            silent_share=args.silent_share,
        )
    except ValueError as exc:
        parser.error(str(exc))
    out = sys.stdout if out is None else out
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # gmqtt logs every lost connection with a traceback; the units log one line instead
    logging.getLogger("gmqtt").setLevel(max(logging.ERROR, logging.getLogger().level))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            continue
        handled.append(sig)
    timer = loop.call_later(args.duration, stop.set) if args.duration is not None else None
    started = loop.time()

    def progress(summary: dict[str, Any]) -> None:
        print(_progress_line(summary, loop.time() - started), file=sys.stderr, flush=True)

    roles = command_roles(fleet)
    slow, silent = roles.count(CommandRole.SLOW), roles.count(CommandRole.SILENT)
    print(
        f"device_sim: {fleet.count} vehicle(s) reporting to mqtt://{host}:{port} every "
        f"{args.interval:g} s (seed {fleet.seed}); {slow} slow, {silent} silent on commands; "
        "Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        summary = await run_fleet(fleet, unit_settings, stop, on_progress=progress)
    except ExceptionGroup as group:
        refused, rest = group.split(UnitConnectError)
        if rest is not None or refused is None:
            raise
        first = refused.exceptions[0]
        print(f"device_sim: error: {first}", file=sys.stderr)
        return 1
    finally:
        if timer is not None:
            timer.cancel()
        for sig in handled:
            loop.remove_signal_handler(sig)
    summary["duration_s"] = round(loop.time() - started, 3)
    print(json.dumps(summary, indent=2), file=out, flush=True)
    return 0
