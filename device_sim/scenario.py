"""Scenario files: reproduce a bug report exactly (same seed, same drives, same faults).

A scenario is a TOML file (see ``device_sim/scenarios/munich-morning.toml``, commented for
copying)::

    seed = 42
    start = 2026-11-27T08:00:00+01:00     # local time with its UTC offset (quoted or not)
    duration = "2h"                       # "90m", "1h30m", "45s", or seconds
    time_acceleration = 60                # 60: one simulated minute per real second
    report_interval_s = 5                 # one telemetry sample per vehicle this often

    [[vehicles]]
    count = 12
    profile = "delivery_van"              # electric_car | combustion_suv | delivery_van | truck
    name = "van"                          # the vehicles are van-1 .. van-12
    start = "Großmarkthalle"              # optional: a node of the road network
    faults = "malformed_json=0.01"        # optional: kept as given, for the fault injector
    pattern = "commute"                   # optional: random (default) | commute (private cars)

    [[events]]
    at = "08:05"                          # on the start's date and offset, or ISO 8601
    vehicle = "van-12"
    action = "depart"                     # depart | low_charge | go_offline | come_online | go_to
                                          # | speed | brake_hard | idle | fault | go_silent

Vehicles are numbered 1..N across the groups in file order; vehicle ``i`` gets the VIN
``make_vin(i, prefix)`` with a prefix derived from the seed (or ``vin_prefix``), its own
``random.Random(f"{seed}:{i}")`` and, unless ``start`` says otherwise, the depot
(:data:`device_sim.city.DEPOT`) for delivery vans and a node drawn from the seed for the
others. Unknown keys are errors, and every error names the file and the key
(``events[2].action``); TOML syntax errors name the line.

A group's ``pattern`` (:class:`~device_sim.vehicle.TripPattern`) is how its vehicles plan
their trips: ``random`` (the default) drives random routes around the clock; ``commute``
(electric cars and combustion SUVs only) makes the start node home, drives to a work place
on weekday mornings and back in the evening, runs errands at weekends and parks overnight,
in the local time of the scenario's ``start`` offset (see ``scenarios/commuters.toml``).

Scripted events
    ``depart``      the driver comes and sets off now (:meth:`SimulatedVehicle.depart_now`).
                    A vehicle with a ``depart`` event stays parked at its start until its
                    first ``depart`` (:meth:`SimulatedVehicle.hold`); the others set off
                    within seconds of the start, as in the demo.
    ``low_charge``  the state of charge or fuel level drops to ``value`` % (default
                    :data:`DEFAULT_LOW_LEVEL_PCT`) (:meth:`SimulatedVehicle.set_energy_level`).
    ``go_offline``  the unit loses its connection (a tunnel): the broker publishes its Last
                    Will (``{"state": "offline"}``, retained); samples and events are buffered.
                    With ``duration`` (``"10m"``) it comes back by itself after that long.
    ``come_online`` the unit reconnects: retained ``online`` status, then the buffered
                    samples as batch messages (at most :data:`BATCH_MAX_SAMPLES` each, oldest
                    first, original ``seq`` and ``ts``), then the buffered events.
    ``go_to``       drive to the node named by ``value`` (:meth:`SimulatedVehicle.go_to`).

    Misbehaviour, so that every fleet rule fires (``scenarios/misbehaving-van.toml``):

    ``speed``       the driver aims for ``value`` km/h whatever the limits, and pulls away
                    hard, for ``duration`` (:meth:`SimulatedVehicle.speed`).
    ``brake_hard``  an emergency stop (:meth:`SimulatedVehicle.brake_hard`).
    ``idle``        stop and stand with the engine running for ``duration``
                    (:meth:`SimulatedVehicle.idle`).
    ``fault``       trouble code ``value`` (``"P0300"``) set now, cleared after ``duration``
                    (default 15 minutes) (:meth:`SimulatedVehicle.raise_fault`).
    ``go_silent``   hung firmware: connected, publishing nothing for ``duration``; what the
                    vehicle did meanwhile is lost, its events come afterwards.

The stream
    :func:`render` is pure: it turns a scenario into the exact messages the units publish, in
    simulated time, without MQTT, clocks or global randomness, so the same file and seed give
    a byte-identical stream. Per vehicle: connect and a retained ``online`` status at the
    start; every ``report_interval_s`` (from the start on) a full telemetry sample (``seq``
    counts up from the start time in ms, as in :mod:`device_sim.fleet`), then the vehicle
    events since the last report; at the end a retained ``offline`` status (a unit offline at
    the end publishes nothing more: its buffer is lost). Messages are ordered by simulated
    time, then vehicle number. A scripted event at a report time acts before that report.
    Samples are stamped with simulated time: a gateway rejects samples more than 5 minutes
    ahead of its clock, so a scenario meant for a gateway should not start in the future.
    Since seq and ts repeat, a gateway treats a second run of the same scenario as duplicates.

    :func:`play` publishes that stream over MQTT 5 (gmqtt, one connection per vehicle, client
    id = VIN, Last Will, QoS 1) in real time scaled by ``time_acceleration``. On a broker
    that admits only provisioned vehicles (``telematics up``), each unit logs in with its
    VIN's entry of a unit credentials file (:mod:`device_sim.credentials`), as ``telematics
    sim --credentials`` does; ``--list-vins`` prints the VINs to provision.

Command line: ``telematics sim scenario FILE (--mqtt-url URL | --credentials FILE | --dump |
--list-vins)`` (also ``python -m device_sim.scenario``); see ``--help``. ``--dump`` writes
one JSON line per message with the payload parsed (``"payload"``), or, for a payload that
is not JSON (the ``malformed_json`` fault), its text as ``"payload_raw"``.

The ``faults`` string of a vehicle group (``malformed_json=0.01,...``, see
:mod:`device_sim.faults`) is applied by :func:`render` with a generator per vehicle derived
from the seed, so the same file gives the same faults at the same samples; an
``abrupt_disconnect`` shows as the Last Will and a reconnect a few seconds later, ``silent``
as a stretch without samples.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import enum
import heapq
import json
import random
import re
import signal
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Final

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from device_sim.city import DEPOT, MUNICH
from device_sim.credentials import UnitCredentials, load_credentials
from device_sim.faults import FaultInjector, FaultRates
from device_sim.vehicle import SimulatedVehicle, TripPattern, VehicleProfile, make_vin
from schemas.payloads import (
    Event,
    Sample,
    Status,
    StatusState,
    encode_batch,
    encode_event,
    encode_status,
)
from schemas.topics import Channel, topic_for

__all__ = [
    "BATCH_MAX_SAMPLES",
    "DEFAULT_LOW_LEVEL_PCT",
    "Action",
    "PlayRefused",
    "Published",
    "Scenario",
    "ScenarioError",
    "ScenarioVehicle",
    "ScriptedEvent",
    "VehicleGroup",
    "load",
    "main",
    "parse",
    "play",
    "render",
]

#: samples per batch message when a unit uploads its buffer after coming back online
BATCH_MAX_SAMPLES: Final = 100
#: after an ``abrupt_disconnect`` fault, the unit is back this much later (its backoff)
_RECONNECT_AFTER_MS: Final = 3000
#: the level a ``low_charge`` event without ``value`` sets, percent
DEFAULT_LOW_LEVEL_PCT: Final = 8.0
#: what MQTT DISCONNECT reason code makes the broker publish the Will
_DISCONNECT_WITH_WILL: Final = 0x04
_VIN_ALPHABET: Final = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"
_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
_UNIT_S: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}


class ScenarioError(ValueError):
    """A scenario file is wrong; the message names the file and the key (or TOML line)."""


class PlayRefused(RuntimeError):
    """The broker refused a unit of the scenario (no login, a wrong one, not provisioned)."""


class Action(enum.StrEnum):
    """What a scripted event does (see the module docstring)."""

    DEPART = "depart"
    LOW_CHARGE = "low_charge"
    GO_OFFLINE = "go_offline"
    COME_ONLINE = "come_online"
    GO_TO = "go_to"
    SPEED = "speed"
    BRAKE_HARD = "brake_hard"
    IDLE = "idle"
    FAULT = "fault"
    GO_SILENT = "go_silent"


#: what ``duration`` means per action (the others take none); a * marks a required one
_DURATIONS: Final = {
    Action.GO_OFFLINE: "offline this long, then back",
    Action.SPEED: "*speeding this long",
    Action.IDLE: "*standing with the engine on this long",
    Action.FAULT: "the code clears after this long (default 15m)",
    Action.GO_SILENT: "*connected but publishing nothing this long",
}
#: a diagnostic trouble code (SAE J2012: P, C, B or U and four hex digits)
_DTC_RE: Final = re.compile(r"^[PCBU][0-9A-F]{4}$")


@dataclass(frozen=True, slots=True)
class VehicleGroup:
    """``[[vehicles]]``: ``count`` vehicles named ``{name}-1`` .. ``{name}-{count}``."""

    name: str
    count: int
    profile: VehicleProfile
    #: start node; None: the depot for delivery vans, else drawn from the seed
    start: str | None = None
    #: fault rates for the fault injector, as written in the file (not interpreted here)
    faults: str | None = None
    #: how the group's vehicles plan their trips
    pattern: TripPattern = TripPattern.RANDOM


@dataclass(frozen=True, slots=True)
class ScriptedEvent:
    """``[[events]]``: ``action`` happens to ``vehicle`` at simulated time ``at_ms``."""

    at_ms: int
    vehicle: str
    action: Action
    #: low_charge: the level, percent; go_to: the node; else None
    value: float | str | None = None
    #: go_offline: come back online after this long, seconds; None: only by come_online
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class ScenarioVehicle:
    """One vehicle of a scenario, fully resolved."""

    index: int
    name: str
    vin: str
    profile: VehicleProfile
    start_node: str
    faults: str | None
    pattern: TripPattern = TripPattern.RANDOM


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario file (see the module docstring)."""

    seed: int
    start: dt.datetime
    duration_s: float
    time_acceleration: float
    report_interval_s: float
    vehicles: tuple[VehicleGroup, ...]
    events: tuple[ScriptedEvent, ...] = ()
    #: None: derived from the seed (see :attr:`effective_vin_prefix`)
    vin_prefix: str | None = None
    description: str = ""

    @property
    def start_ms(self) -> int:
        return round(self.start.timestamp() * 1000)

    @property
    def utc_offset_min(self) -> int:
        """The start's UTC offset, minutes: the local time commuters live by."""
        offset = self.start.utcoffset()
        return 0 if offset is None else round(offset.total_seconds() / 60)

    @property
    def end_ms(self) -> int:
        return self.start_ms + round(self.duration_s * 1000)

    @property
    def effective_vin_prefix(self) -> str:
        """``vin_prefix``, or ``WSS`` plus three characters from the seed."""
        if self.vin_prefix is not None:
            return self.vin_prefix
        n = self.seed % len(_VIN_ALPHABET) ** 3
        chars = []
        for _ in range(3):
            n, digit = divmod(n, len(_VIN_ALPHABET))
            chars.append(_VIN_ALPHABET[digit])
        return "WSS" + "".join(reversed(chars))

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario with another seed (and so other drives and VINs)."""
        return replace(self, seed=seed)

    def fleet(self) -> tuple[ScenarioVehicle, ...]:
        """The vehicles, numbered 1..N across the groups in file order."""
        nodes = sorted(n for n in MUNICH.nodes if n != DEPOT and MUNICH.neighbours(n))
        random.Random(f"{self.seed}:start-nodes").shuffle(nodes)
        out: list[ScenarioVehicle] = []
        others = 0
        prefix = self.effective_vin_prefix
        for group in self.vehicles:
            for i in range(1, group.count + 1):
                index = len(out) + 1
                start = group.start
                if start is None:
                    if group.profile is VehicleProfile.DELIVERY_VAN:
                        start = DEPOT
                    else:
                        start = nodes[others % len(nodes)]
                        others += 1
                vin = make_vin(index, prefix)
                out.append(
                    ScenarioVehicle(
                        index,
                        f"{group.name}-{i}",
                        vin,
                        group.profile,
                        start,
                        group.faults,
                        group.pattern,
                    )
                )
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Published:
    """One MQTT message a unit publishes (or, for a lost connection, its Last Will)."""

    #: simulated time of publishing, ms since the Unix epoch
    sim_ms: int
    topic: str
    payload: bytes
    qos: int
    retain: bool

    def to_json(self) -> str:
        """One JSON line for ``--dump``: the payload parsed as ``"payload"``, or, when it is
        not JSON (a ``malformed_json`` fault), its text as ``"payload_raw"``."""
        line: dict[str, Any] = {
            "sim_ms": self.sim_ms,
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
        }
        try:
            line["payload"] = json.loads(self.payload)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            line["payload_raw"] = self.payload.decode("utf-8", errors="backslashreplace")
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


# --- parsing ----------------------------------------------------------------------------------
#
# The file's shape (keys, required ones, each value's type and range) is the pydantic model
# below; what depends on more than one key (unique names, events naming a vehicle of the
# file and a time inside it, the value an action takes) is checked on the validated model.
# Either way an error is a ScenarioError naming the file and the key, with what it takes.

_COMMUTERS: Final = (VehicleProfile.ELECTRIC_CAR, VehicleProfile.COMBUSTION_SUV)


def _number(value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return float(value)


def _duration(value: Any) -> float:
    if isinstance(value, str):
        text = value.replace(" ", "")
        parts = _DURATION_RE.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f'must be like "2h", "90m", "1h30m" or "45s", got {value!r}')
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
        if seconds <= 0:
            raise ValueError(f"must be > 0, got {value!r}")
        return seconds
    return _number(value)


def _start(value: Any) -> dt.datetime:
    when = value
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"must be ISO 8601 like 2026-11-27T08:00:00+01:00, got {value!r}"
            ) from None
    if not isinstance(when, dt.datetime):
        raise ValueError(f"must be a date and time with offset, got {value!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"needs a UTC offset (like +01:00), got {value!r}")
    if when.timestamp() < 0:
        raise ValueError("must be after 1970")
    return when


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}")
    return value


def _interval(value: Any) -> float:
    interval = _number(value)
    if not 0.1 <= interval <= 3600.0:
        raise ValueError(f"must be within 0.1-3600 s, got {interval!r}")
    return interval


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _vin_prefix(value: Any) -> str:
    make_vin(1, _string(value))  # its ValueError says what a prefix may be
    return str(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ValueError(f"must be an integer 1-10000, got {value!r}")
    return value


def _choice(kind: type[enum.StrEnum]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            choices = " | ".join(x.value for x in kind)
            raise ValueError(f"must be {choices}, got {value!r}") from None

    return check


def _group_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"must be lower-case letters, digits or _ (like van), got {value!r}")
    return value


def _node(value: Any) -> str:
    if not isinstance(value, str) or value not in MUNICH.nodes or not MUNICH.neighbours(value):
        raise ValueError(f"{value!r} is not a node of the road network")
    return value


def _faults(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    FaultRates.parse(value)  # its ValueError names the bad rate
    return value


def _tables(kind: str, *, required: bool) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, list) or (required and not value):
            raise ValueError(
                f"must be one or more [[{kind}]] tables"
                if required
                else f"must be [[{kind}]] tables"
            )
        return value

    return check


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _GroupTable(_Table):
    """``[[vehicles]]``."""

    count: Annotated[int, BeforeValidator(_count)]
    profile: Annotated[VehicleProfile, BeforeValidator(_choice(VehicleProfile))]
    name: Annotated[str, BeforeValidator(_group_name)]
    start: Annotated[str | None, BeforeValidator(_node)] = None
    faults: Annotated[str | None, BeforeValidator(_faults)] = None
    pattern: Annotated[TripPattern, BeforeValidator(_choice(TripPattern))] = TripPattern.RANDOM


class _EventTable(_Table):
    """``[[events]]``; ``at``, ``value`` and ``duration`` are read with the rest of the file
    (the start, the action)."""

    at: Any
    vehicle: Any
    action: Annotated[Action, BeforeValidator(_choice(Action))]
    value: Any = None
    duration: Any = None


class _ScenarioFile(_Table):
    """The whole file."""

    seed: Annotated[int, BeforeValidator(_seed)]
    start: Annotated[dt.datetime, BeforeValidator(_start)]
    duration: Annotated[float, BeforeValidator(_duration)]
    time_acceleration: Annotated[float, BeforeValidator(_number)] = 1.0
    report_interval_s: Annotated[float, BeforeValidator(_interval)] = 5.0
    vin_prefix: Annotated[str | None, BeforeValidator(_vin_prefix)] = None
    description: Annotated[str, BeforeValidator(_string)] = ""
    vehicles: Annotated[list[_GroupTable], BeforeValidator(_tables("vehicles", required=True))]
    events: Annotated[list[_EventTable], BeforeValidator(_tables("events", required=False))] = (
        Field(default_factory=list)
    )


def _key(loc: Sequence[int | str]) -> str:
    """``("events", 2, "at")`` -> ``events[3].at`` (tables count from 1, as people do)."""
    key = ""
    for part in loc:
        key += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key


def _problem(error: Any, model: type[BaseModel]) -> str:
    """What a pydantic error says, in this module's words."""
    kind = error["type"]
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return f"unknown key (allowed: {', '.join(sorted(model.model_fields))})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        table = error["loc"][0] if error["loc"] else "scenario"
        return f"must be a{'n' if table == 'events' else ''} [[{table}]] table"
    cause = error.get("ctx", {}).get("error")
    return str(cause) if cause is not None else str(error["msg"])


def _model_of(loc: Sequence[int | str]) -> type[BaseModel]:
    """The table an error's key is in (for the keys it allows)."""
    if len(loc) >= 2 and isinstance(loc[1], int):
        return _GroupTable if loc[0] == "vehicles" else _EventTable
    return _ScenarioFile


def _validated(raw: Mapping[str, Any], source: str) -> _ScenarioFile:
    try:
        return _ScenarioFile.model_validate(raw)
    except ValidationError as exc:
        # an unknown key is named before anything else, as a misspelt key explains the rest
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        first = errors[0]
        loc = first["loc"]
        problem = _problem(first, _model_of(loc))
        raise ScenarioError(f"{source}: {_key(loc)}: {problem}") from None


class _Checker:
    """The rules across keys, on a validated file."""

    def __init__(self, source: str, start: dt.datetime) -> None:
        self.source = source
        self.start = start

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {key}: {problem}")

    def groups(self, tables: Sequence[_GroupTable], vin_prefix: str | None) -> list[VehicleGroup]:
        names: set[str] = set()
        groups = []
        for n, table in enumerate(tables, 1):
            where = f"vehicles[{n}]"
            if table.name in names:
                raise self.fail(f"{where}.name", f"{table.name!r} is used by another group")
            names.add(table.name)
            if table.pattern is TripPattern.COMMUTE and table.profile not in _COMMUTERS:
                allowed = " and ".join(x.value for x in _COMMUTERS)
                raise self.fail(
                    f"{where}.pattern", f"only {allowed} can commute, not {table.profile.value}"
                )
            groups.append(
                VehicleGroup(
                    table.name, table.count, table.profile, table.start, table.faults, table.pattern
                )
            )
        total = sum(g.count for g in groups)
        prefix_len = len(vin_prefix) if vin_prefix is not None else 6
        if total >= 10 ** (17 - prefix_len):
            raise self.fail("vehicles", f"{total} vehicles do not fit the VIN serial")
        return groups

    def at(self, value: Any, key: str) -> int:
        start = self.start
        when: dt.datetime | None = None
        if isinstance(value, dt.datetime):
            when = value
        elif isinstance(value, dt.time):
            when = dt.datetime.combine(start.date(), value, start.tzinfo)
        elif isinstance(value, str):
            try:
                if "T" in value or " " in value.strip():
                    when = dt.datetime.fromisoformat(value)
                else:
                    clock = dt.time.fromisoformat(value)
                    when = dt.datetime.combine(start.date(), clock, start.tzinfo)
            except ValueError:
                when = None
        if when is None:
            raise self.fail(key, f'must be a time like "08:05" or ISO 8601, got {value!r}')
        if when.tzinfo is None or when.utcoffset() is None:
            raise self.fail(key, f"a date and time needs a UTC offset, got {value!r}")
        ms = round(when.timestamp() * 1000)
        if ms < round(start.timestamp() * 1000):
            raise self.fail(key, f"{value!s} is before the start ({start.isoformat()})")
        return ms

    def event(
        self, n: int, table: _EventTable, vehicle_names: Collection[str], end_ms: int
    ) -> ScriptedEvent:
        where = f"events[{n}]"
        at_ms = self.at(table.at, f"{where}.at")
        if at_ms >= end_ms:
            raise self.fail(f"{where}.at", f"{table.at!s} is not before the scenario's end")
        if table.vehicle not in vehicle_names:
            raise self.fail(f"{where}.vehicle", f"no vehicle named {table.vehicle!r}")
        action, given = table.action, table.model_fields_set
        duration = None
        meaning = _DURATIONS.get(action)
        if "duration" in given:
            if meaning is None:
                takers = ", ".join(a.value for a in _DURATIONS)
                raise self.fail(f"{where}.duration", f"only {takers} take one, not {action}")
            duration = float(self.checked(_duration, table.duration, f"{where}.duration"))
        elif meaning is not None and meaning.startswith("*"):
            raise self.fail(f"{where}.duration", f"{action} needs one ({meaning[1:]})")
        value = self.value(table, where)
        return ScriptedEvent(at_ms, table.vehicle, action, value, duration)

    def value(self, table: _EventTable, where: str) -> float | str | None:
        action, key = table.action, f"{where}.value"
        if action is Action.LOW_CHARGE:
            raw = table.value if "value" in table.model_fields_set else DEFAULT_LOW_LEVEL_PCT
            level: float = self.checked(lambda v: _number(v, positive=False), raw, key)
            if not 0.0 <= level <= 100.0:
                raise self.fail(key, f"must be a level within 0-100 %, got {level!r}")
            return level
        if action is Action.GO_TO:
            if "value" not in table.model_fields_set:
                raise self.fail(key, "missing")
            node: str = self.checked(_node, table.value, key)
            return node
        if action is Action.SPEED:
            if "value" not in table.model_fields_set:
                raise self.fail(key, "missing (the speed the driver aims for, km/h)")
            kmh: float = self.checked(_number, table.value, key)
            if not kmh <= 250.0:
                raise self.fail(key, f"must be a speed up to 250 km/h, got {kmh!r}")
            return kmh
        if action is Action.FAULT:
            code = table.value
            if not isinstance(code, str) or not _DTC_RE.match(code):
                raise self.fail(key, f"must be a trouble code like P0300, got {code!r}")
            return code
        if "value" in table.model_fields_set:
            raise self.fail(key, f"{action} takes no value")
        return None

    def checked(self, check: Callable[[Any], Any], value: Any, key: str) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


#: the scenarios that come with the simulator
SHIPPED_SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def _no_such_file(path: Path) -> str:
    """Says what a scenario file that is not there could have been: the shipped ones, as
    a path from here when that is short (the checkout's ``device_sim/scenarios/``)."""
    where = SHIPPED_SCENARIOS
    with contextlib.suppress(ValueError):
        where = SHIPPED_SCENARIOS.relative_to(Path.cwd())
    shipped = ", ".join(sorted(p.name for p in SHIPPED_SCENARIOS.glob("*.toml")))
    return f"there is no scenario file {path}; the shipped scenarios are in {where}/: {shipped}"


def load(path: str | Path) -> Scenario:
    """Read and parse a scenario file; raises :class:`ScenarioError` (or ``OSError``)."""
    p = Path(path)
    return parse(p.read_text(encoding="utf-8"), source=str(p))


def parse(text: str, *, source: str = "<scenario>") -> Scenario:
    """Parse scenario TOML; raises :class:`ScenarioError` naming ``source`` and the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: invalid TOML: {exc}") from None
    file = _validated(raw, source)
    check = _Checker(source, file.start)
    groups = check.groups(file.vehicles, file.vin_prefix)
    vehicle_names = {f"{g.name}-{i}" for g in groups for i in range(1, g.count + 1)}
    end_ms = round(file.start.timestamp() * 1000) + round(file.duration * 1000)
    events = [
        check.event(n, table, vehicle_names, end_ms) for n, table in enumerate(file.events, 1)
    ]
    return Scenario(
        seed=file.seed,
        start=file.start,
        duration_s=file.duration,
        time_acceleration=file.time_acceleration,
        report_interval_s=file.report_interval_s,
        vehicles=tuple(groups),
        events=tuple(events),
        vin_prefix=file.vin_prefix,
        description=file.description,
    )


# --- rendering --------------------------------------------------------------------------------


class _Op(enum.Enum):
    CONNECT = "connect"
    PUBLISH = "publish"
    #: the connection is lost: the broker publishes the Will (``published``)
    LOSE = "lose"
    #: a clean goodbye after the final offline status
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class _Item:
    sim_ms: int
    index: int
    n: int
    op: _Op
    published: Published | None
    vin: str


def _advance(vehicle: SimulatedVehicle, to_ms: int) -> None:
    if to_ms > vehicle.sim_time_ms:
        vehicle.step((to_ms - vehicle.sim_time_ms) / 1000.0)


def _vehicle_items(scenario: Scenario, sv: ScenarioVehicle) -> Iterator[_Item]:
    """Everything one unit does, in simulated-time order."""
    return _UnitScript(scenario, sv).items()


def _unit_script(scenario: Scenario, name: str) -> list[ScriptedEvent]:
    """The events of vehicle ``name`` in time order, a come_online added after every
    go_offline with a duration (if it ends before the scenario)."""
    script = [e for e in scenario.events if e.vehicle == name]
    for e in script:
        if e.action is Action.GO_OFFLINE and e.duration_s is not None:
            back = e.at_ms + round(e.duration_s * 1000)
            if back < scenario.end_ms:
                script.append(ScriptedEvent(back, e.vehicle, Action.COME_ONLINE))
    script.sort(key=lambda e: e.at_ms)  # stable: file order at equal times
    return script


def _speed(vehicle: SimulatedVehicle, e: ScriptedEvent) -> None:
    assert isinstance(e.value, float)
    assert e.duration_s is not None
    vehicle.speed(e.value, e.duration_s)


def _idle(vehicle: SimulatedVehicle, e: ScriptedEvent) -> None:
    assert e.duration_s is not None
    vehicle.idle(e.duration_s)


def _fault(vehicle: SimulatedVehicle, e: ScriptedEvent) -> None:
    assert isinstance(e.value, str)
    vehicle.raise_fault(e.value, 900.0 if e.duration_s is None else e.duration_s)


#: the scripted misbehaviour of the vehicle itself (see SimulatedVehicle)
_MISBEHAVIOUR: Final[dict[Action, Callable[[SimulatedVehicle, ScriptedEvent], None]]] = {
    Action.SPEED: _speed,
    Action.BRAKE_HARD: lambda vehicle, _e: vehicle.brake_hard(),
    Action.IDLE: _idle,
    Action.FAULT: _fault,
}


class _UnitScript:
    """One unit of a scenario played in simulated time: what it publishes at every report
    tick and scripted event, with store-and-forward while offline and the group's faults."""

    def __init__(self, scenario: Scenario, sv: ScenarioVehicle) -> None:
        self.scenario = scenario
        self.sv = sv
        start_ms = scenario.start_ms
        self.vehicle = SimulatedVehicle(
            sv.vin,
            sv.profile,
            MUNICH,
            random.Random(f"{scenario.seed}:{sv.index}"),
            sv.start_node,
            start_ms=start_ms,
            first_event_seq=start_ms,
            pattern=sv.pattern,
            utc_offset_min=scenario.utc_offset_min,
        )
        self.script = _unit_script(scenario, sv.name)
        if any(e.action is Action.DEPART for e in self.script):
            self.vehicle.hold()
        vin = sv.vin
        self.telemetry = topic_for(vin, Channel.TELEMETRY)
        self.events_topic = topic_for(vin, Channel.EVENTS)
        self.status_topic = topic_for(vin, Channel.STATUS)
        self.counter = 0
        self.online = True
        self.buffer: list[Sample] = []
        self.held_events: list[Event] = []
        self.seq = start_ms
        # the group's faults, from a generator of their own: the drives are the same with or
        # without faults, and the same seed gives the same faults
        rates = FaultRates.parse(sv.faults) if sv.faults else FaultRates()
        self.injector = FaultInjector(rates, random.Random(f"{scenario.seed}:{sv.index}:faults"))
        self.reconnect_at: int | None = None
        self.silent_until = 0

    def item(
        self, sim_ms: int, op: _Op, topic: str = "", payload: bytes = b"", retain: bool = False
    ) -> _Item:
        self.counter += 1
        published = Published(sim_ms, topic, payload, 1, retain) if topic else None
        return _Item(sim_ms, self.sv.index, self.counter, op, published, self.sv.vin)

    def status(self, sim_ms: int, state: StatusState) -> _Item:
        payload = encode_status(Status(state, sim_ms))
        return self.item(sim_ms, _Op.PUBLISH, self.status_topic, payload, True)

    def lose(self, sim_ms: int) -> _Item:
        """The connection is lost: the broker publishes the unit's Will."""
        will = encode_status(Status(StatusState.OFFLINE))
        return self.item(sim_ms, _Op.LOSE, self.status_topic, will, True)

    def items(self) -> Iterator[_Item]:
        start_ms, end_ms = self.scenario.start_ms, self.scenario.end_ms
        yield self.item(start_ms, _Op.CONNECT)
        yield self.status(start_ms, StatusState.ONLINE)
        interval_ms = max(1, round(self.scenario.report_interval_s * 1000))
        next_event = 0
        tick = start_ms
        while tick < end_ms:
            while next_event < len(self.script) and self.script[next_event].at_ms <= tick:
                yield from self.scripted(self.script[next_event])
                next_event += 1
            yield from self.report(tick)
            tick += interval_ms
        if self.online:
            yield self.status(end_ms, StatusState.OFFLINE)
            yield self.item(end_ms, _Op.DISCONNECT)

    def scripted(self, e: ScriptedEvent) -> Iterator[_Item]:
        """What a scripted event does: the connection goes or comes back (uploading what was
        kept), or the vehicle departs, runs low or drives somewhere."""
        vehicle = self.vehicle
        if e.action is Action.GO_OFFLINE:
            if self.online:
                self.online = False
                yield self.lose(e.at_ms)
        elif e.action is Action.COME_ONLINE:
            if not self.online:
                self.online = True
                yield from self.come_back(e.at_ms)
        elif e.action is Action.GO_SILENT:
            assert e.duration_s is not None
            self.silent_until = max(self.silent_until, e.at_ms + round(e.duration_s * 1000))
        else:
            _advance(vehicle, e.at_ms)
            if e.action is Action.DEPART:
                vehicle.depart_now()
            elif e.action is Action.LOW_CHARGE:
                assert isinstance(e.value, float)
                vehicle.set_energy_level(e.value)
            elif e.action in _MISBEHAVIOUR:
                _MISBEHAVIOUR[e.action](vehicle, e)
            else:  # GO_TO
                assert isinstance(e.value, str)
                vehicle.go_to(e.value)

    def come_back(self, sim_ms: int) -> Iterator[_Item]:
        """Reconnected after go_offline: online again, then the kept samples and events."""
        yield self.item(sim_ms, _Op.CONNECT)
        yield self.status(sim_ms, StatusState.ONLINE)
        vin, buffer = self.sv.vin, self.buffer
        for i in range(0, len(buffer), BATCH_MAX_SAMPLES):
            batch = encode_batch(vin, buffer[i : i + BATCH_MAX_SAMPLES])
            yield self.item(sim_ms, _Op.PUBLISH, self.telemetry, batch)
        for event in self.held_events:
            yield self.item(sim_ms, _Op.PUBLISH, self.events_topic, encode_event(event))
        self.buffer, self.held_events = [], []

    def report(self, tick: int) -> Iterator[_Item]:
        """One report tick: a sample (and the pending events) sent, kept or lost to a fault."""
        vehicle = self.vehicle
        _advance(vehicle, tick)
        if self.online and self.reconnect_at is not None and tick >= self.reconnect_at:
            self.reconnect_at = None  # back after an abrupt disconnect (fault)
            yield self.item(tick, _Op.CONNECT)
            yield self.status(tick, StatusState.ONLINE)
        events = vehicle.pending_events()
        if self.online and (self.reconnect_at is not None or tick < self.silent_until):
            # fault: connection lost (reconnecting) or hung firmware; nothing is taken
            self.held_events.extend(events)
            return
        sample = Sample(self.sv.vin, self.seq, vehicle.sim_time_ms, vehicle.signals())
        if not self.online:
            self.seq += 1
            self.buffer.append(sample)
            self.held_events.extend(events)
            return
        planned = self.injector.next(sample)
        self.seq = sample.seq + planned.seqs_used
        for payload in planned.payloads:
            yield self.item(tick, _Op.PUBLISH, self.telemetry, payload)
        for event in (*self.held_events, *events):
            yield self.item(tick, _Op.PUBLISH, self.events_topic, encode_event(event))
        self.held_events = []
        if planned.disconnect:
            yield self.lose(tick)
            self.reconnect_at = tick + _RECONNECT_AFTER_MS
        if planned.silence_s:
            self.silent_until = tick + round(planned.silence_s * 1000)


def _items(
    scenario: Scenario, *, until: int | None = None, only: Collection[str] | None = None
) -> Iterator[_Item]:
    fleet = scenario.fleet()
    if only is not None:
        unknown = sorted(set(only) - {v.name for v in fleet})
        if unknown:
            raise ValueError(f"no vehicle named {', '.join(map(repr, unknown))}")
        fleet = tuple(v for v in fleet if v.name in only)
    streams = [_vehicle_items(scenario, sv) for sv in fleet]
    for it in heapq.merge(*streams, key=lambda i: (i.sim_ms, i.index, i.n)):
        if until is not None and it.sim_ms > until:
            return
        yield it


def render(
    scenario: Scenario, *, until: int | None = None, only: Collection[str] | None = None
) -> Iterator[Published]:
    """The exact stream the scenario's units publish (the Last Will included), lazily.

    ``until`` (ms since the Unix epoch, inclusive) stops early; ``only`` keeps just the named
    vehicles (``{"van-12"}``): each vehicle's messages are the same with or without the others.
    """
    for it in _items(scenario, until=until, only=only):
        if it.published is not None:
            yield it.published


# --- playing over MQTT ------------------------------------------------------------------------


def _make_client(vin: str, credentials: UnitCredentials | None) -> Any:
    will = gmqtt.Message(
        topic_for(vin, Channel.STATUS),
        encode_status(Status(StatusState.OFFLINE)),
        qos=1,
        retain=True,
    )
    client = gmqtt.Client(vin, clean_session=True, will_message=will)
    entry = None if credentials is None else credentials.vehicles.get(vin)
    if entry is not None:
        client.set_auth_credentials(entry.mqtt_username, entry.mqtt_password)
    return client


async def play(
    scenario: Scenario,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_progress: Callable[[Published], None] | None = None,
    until: int | None = None,
    only: Collection[str] | None = None,
    credentials: UnitCredentials | None = None,
) -> int:
    """Publish :func:`render`'s stream over MQTT 5 in real time scaled by the scenario's
    ``time_acceleration``; returns the number of messages published (Wills included).

    One gmqtt connection per vehicle, client id = VIN, QoS 1, with a retained ``offline``
    Last Will; ``go_offline`` drops the connection so that the broker publishes the Will.
    With ``credentials`` each unit logs in with its VIN's user name and password; a unit the
    broker refuses raises :class:`PlayRefused`.
    ``on_progress`` is called with every message after it is handed to the connection.
    Setting ``stop`` ends early: each connected unit then publishes a retained ``offline``
    status stamped with the simulated time reached and disconnects.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    speed = scenario.time_acceleration
    clients: dict[str, Any] = {}
    count = 0
    sim_ms = scenario.start_ms
    try:
        for it in _items(scenario, until=until, only=only):
            delay = t0 + (it.sim_ms - scenario.start_ms) / 1000.0 / speed - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
            sim_ms = it.sim_ms
            if it.op is _Op.CONNECT:
                client = _make_client(it.vin, credentials)
                try:
                    await client.connect(host, port, version=MQTTv50, keepalive=60)
                except gmqtt.MQTTConnectError as exc:
                    with contextlib.suppress(Exception):
                        await client.disconnect()
                    raise PlayRefused(f"{host}:{port} refused unit {it.vin}: {exc}") from exc
                clients[it.vin] = client
            elif it.op is _Op.PUBLISH:
                assert it.published is not None
                m = it.published
                clients[it.vin].publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            elif it.op is _Op.LOSE:
                await clients.pop(it.vin).disconnect(reason_code=_DISCONNECT_WITH_WILL)
            else:  # DISCONNECT
                await clients.pop(it.vin).disconnect()
            if it.published is not None:
                count += 1
                if on_progress is not None:
                    on_progress(it.published)
    finally:
        goodbye = encode_status(Status(StatusState.OFFLINE, sim_ms))
        for vin, client in clients.items():
            with contextlib.suppress(Exception):
                client.publish(topic_for(vin, Channel.STATUS), goodbye, qos=1, retain=True)
                await client.disconnect()
    return count


# --- command line -----------------------------------------------------------------------------


def _parse_until(value: str | None, scenario: Scenario) -> int | None:
    if value is None:
        return None
    try:
        return _Checker("command line", scenario.start).at(value, "--until")
    except ScenarioError as exc:
        raise SystemExit(f"error: {exc}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telematics sim scenario",
        description=(
            "Replay a scenario file (seed, vehicles, start time, time acceleration, scripted\n"
            "events) as simulated in-car units. The same file and seed always give the same\n"
            "published stream: use --dump twice and diff to check.\n"
            "\n"
            "On a broker that admits only provisioned vehicles (telematics up), provision the\n"
            "scenario's vehicles first and play with their credentials file, as with\n"
            "telematics sim --credentials."
        ),
        epilog=(
            "examples (in the checkout; the scenarios are in device_sim/scenarios/):\n"
            "  telematics sim scenario device_sim/scenarios/munich-morning.toml --dump \\\n"
            "      --until 08:30 > run.jsonl\n"
            "  telematics sim scenario device_sim/scenarios/munich-morning.toml \\\n"
            "      --mqtt-url mqtt://127.0.0.1:1883            an open broker\n"
            "  telematics vehicle add $(telematics sim scenario \\\n"
            "      device_sim/scenarios/munich-morning.toml --list-vins) \\\n"
            "      --account 'Demo Fleet' --credentials-file scenario-units.json\n"
            "  telematics sim scenario device_sim/scenarios/munich-morning.toml \\\n"
            "      --credentials scenario-units.json           telematics up's closed broker,\n"
            "                                                  each unit logged in as its VIN\n"
            "The file format is described in device_sim/scenario.py and the example files in\n"
            "device_sim/scenarios/.\n"
            "\n"
            "exit status: 0 when the stream was played (or dumped); 1 when the broker cannot be\n"
            "reached or refuses a unit; 2 for a bad file or bad options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", type=Path, help="scenario TOML file")
    parser.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker to publish to, mqtt://host[:port] (default: the --credentials file's "
        "broker URL)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="unit credentials file written by provisioning (as for telematics sim "
        "--credentials): each unit logs in with its VIN's user name and password; every "
        "vehicle of the scenario must be in it (default: none, anonymous)",
    )
    parser.add_argument(
        "--dump",
        action="store_true",
        help="print the stream as JSON lines instead (no broker, as fast as possible)",
    )
    parser.add_argument(
        "--list-vins",
        action="store_true",
        help="print the scenario's VINs, one per line, and exit: what to provision "
        "(telematics vehicle add $(...) --account ... --credentials-file FILE)",
    )
    parser.add_argument("--seed", type=int, help="override the file's seed")
    parser.add_argument(
        "--until", help='stop at this simulated time ("08:30" or ISO 8601), inclusive'
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="only this vehicle (repeatable), e.g. van-12",
    )
    parser.add_argument(
        "--time-acceleration", type=float, help="override the file's time_acceleration"
    )
    return parser


def _scenario_from(args: argparse.Namespace) -> Scenario:
    """The scenario of the command line (file, --seed, --time-acceleration); raises
    ScenarioError or OSError."""
    scenario = load(args.file)
    if args.seed is not None:
        if args.seed < 0:
            raise ScenarioError("--seed must be >= 0")
        scenario = scenario.with_seed(args.seed)
    if args.time_acceleration is not None:
        if not args.time_acceleration > 0:
            raise ScenarioError("--time-acceleration must be > 0")
        scenario = replace(scenario, time_acceleration=args.time_acceleration)
    return scenario


def _broker_and_logins(
    args: argparse.Namespace, vins: Sequence[str]
) -> tuple[str, int, UnitCredentials | None]:
    """Where to play and with which logins; raises ValueError (OSError for the file) with
    what to do."""
    credentials = None if args.credentials is None else load_credentials(args.credentials)
    url = args.mqtt_url
    if url is None and credentials is not None:
        url = credentials.broker_url
        if url is None:
            raise ValueError(
                f"{args.credentials} does not say which broker its vehicles belong to: give "
                "--mqtt-url mqtt://host:port"
            )
    if url is None:
        raise ValueError(
            "where to? give --mqtt-url mqtt://host:port (or --credentials FILE, whose broker "
            "URL is used), or --dump to print the stream"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"the broker URL must be mqtt://host[:port], got {url!r}")
    if credentials is not None:
        missing = [vin for vin in vins if vin not in credentials.vehicles]
        if missing:
            raise ValueError(
                f"{len(missing)} vehicle(s) of the scenario are not in {args.credentials}: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Provision "
                f"them: telematics vehicle add $(telematics sim scenario {args.file} "
                f"--list-vins) --account ACCOUNT --credentials-file {args.credentials}"
            )
    return parts.hostname, parts.port or 1883, credentials


async def main(argv: Sequence[str] | None = None) -> int:
    """``telematics sim scenario`` (``python -m device_sim.scenario``); returns the exit
    status."""
    args = _build_parser().parse_args(argv)
    try:
        scenario = _scenario_from(args)
    except FileNotFoundError:
        print(f"error: {_no_such_file(args.file)}", file=sys.stderr)
        return 2
    except (ScenarioError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    until = _parse_until(args.until, scenario)
    only = set(args.only) if args.only else None
    fleet = scenario.fleet()
    names = {v.name for v in fleet}
    if only is not None and not only <= names:
        print(f"error: --only: no vehicle named {sorted(only - names)}", file=sys.stderr)
        return 2
    vins = [v.vin for v in fleet if only is None or v.name in only]
    if args.list_vins:
        sys.stdout.write("".join(f"{vin}\n" for vin in vins))
        sys.stdout.flush()
        return 0
    if args.dump:
        out = sys.stdout
        for message in render(scenario, until=until, only=only):
            out.write(message.to_json() + "\n")
        out.flush()
        return 0
    try:
        host, port, credentials = _broker_and_logins(args, vins)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return await _play_command(scenario, args, host, port, credentials, until, only)


async def _play_command(
    scenario: Scenario,
    args: argparse.Namespace,
    host: str,
    port: int,
    credentials: UnitCredentials | None,
    until: int | None,
    only: Collection[str] | None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    minute = [-1]

    def progress(message: Published) -> None:
        m = message.sim_ms // 60_000
        if m != minute[0]:
            minute[0] = m
            local = dt.datetime.fromtimestamp(message.sim_ms / 1000, scenario.start.tzinfo)
            print(f"{local:%H:%M} simulated", file=sys.stderr, flush=True)

    url = f"mqtt://{host}:{port}"
    try:
        count = await play(
            scenario,
            host=host,
            port=port,
            stop=stop,
            on_progress=progress,
            until=until,
            only=only,
            credentials=credentials,
        )
    except PlayRefused as exc:
        hint = (
            f"check the credentials in {args.credentials}"
            if credentials is not None
            else "the broker admits only vehicles that log in (the broker of telematics up "
            "does): provision the scenario's vehicles (telematics vehicle add $(telematics "
            f"sim scenario {args.file} --list-vins) --account ACCOUNT --credentials-file "
            "FILE) and play with --credentials FILE"
        )
        print(f"error: {exc}; {hint}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach the MQTT broker at {url}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print(f"published {count} messages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
