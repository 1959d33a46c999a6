"""Simulated units answering commands: a fake gateway that sends them, a watcher of the
results, and parked vehicles to command."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from device_sim.city import MUNICH
from device_sim.unit import SimulatedUnit, UnitSettings, wall_clock_ms
from device_sim.vehicle import SimulatedVehicle, VehicleProfile, make_vin
from gateway.broker import MosquittoProcess
from schemas import Channel, Sample, decode_telemetry, topic_for
from schemas.commands import (
    CommandMessage,
    CommandResult,
    CommandType,
    ParamValue,
    ResultStatus,
    command_result_topic,
    command_topic,
    decode_command_result,
    encode_command,
    message_expiry_interval,
)
from tests.support.unit_harness import until

C = CommandType
VIN = make_vin(21)
OTHER_VIN = make_vin(99)


# 2025-06-15 12:00 UTC and 2025-01-15 07:00 UTC: a warm and a cold start for the model
SUMMER_MS = 1_749_988_800_000


def car(
    profile: VehicleProfile = VehicleProfile.ELECTRIC_CAR,
    seed: int = 1,
    *,
    start_ms: int = SUMMER_MS,
    level: float | None = 50.0,
    start: str = "Marienplatz",
    vin: str = VIN,
) -> SimulatedVehicle:
    return SimulatedVehicle(
        vin,
        profile,
        MUNICH,
        random.Random(seed),
        start,
        start_ms=start_ms,
        initial_level_pct=level,
    )


def parked(
    profile: VehicleProfile = VehicleProfile.ELECTRIC_CAR, **kwargs: Any
) -> SimulatedVehicle:
    """A vehicle that stays parked and locked: immobilized before its first trip."""
    vehicle = car(profile, **kwargs)
    vehicle.immobilize()
    return vehicle


@dataclass(frozen=True, slots=True)
class Got:
    topic: str
    payload: bytes
    correlation: bytes | None
    at: float


class Watcher:
    """Subscribes to everything (``#``; with credentials, the service account's whole
    device contract ``v1/#``, all a closed broker lets it read); records each message with
    its correlation data."""

    def __init__(
        self, broker: MosquittoProcess, credentials: tuple[str, str] | None = None
    ) -> None:
        self.broker = broker
        self.messages: list[Got] = []
        self.client = gmqtt.Client(f"watcher-{uuid.uuid4().hex[:8]}")
        self._filter = "#"
        if credentials is not None:
            self.client.set_auth_credentials(*credentials)
            self._filter = "v1/#"
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribed = False

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        correlation = props.get("correlation_data")
        self.messages.append(
            Got(
                topic,
                payload,
                correlation[0] if correlation else None,
                asyncio.get_running_loop().time(),
            )
        )
        return 0

    def _on_subscribe(self, client: Any, mid: int, qos: Any, props: Any) -> None:
        self._subscribed = True

    async def __aenter__(self) -> Watcher:
        await self.client.connect(self.broker.host, self.broker.port, version=MQTTv50)
        self.client.subscribe(self._filter, qos=1)
        await until(lambda: self._subscribed, "the watcher's SUBACK")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    def on(self, topic: str) -> list[Got]:
        return [m for m in self.messages if m.topic == topic]

    def results(self, command_id: str, *, vin: str = VIN, topic: str | None = None) -> list[Got]:
        """The answers to ``command_id`` (on ``vin``'s result topic unless told otherwise)."""
        topic = command_result_topic(vin) if topic is None else topic
        return [m for m in self.on(topic) if command_id.encode() in m.payload]

    def decoded(self, command_id: str, **kwargs: Any) -> list[CommandResult]:
        out = []
        for got in self.results(command_id, **kwargs):
            result = decode_command_result(got.payload, topic_vin=VIN)
            assert isinstance(result, CommandResult), result
            out.append(result)
        return out

    def statuses(self, command_id: str, **kwargs: Any) -> list[ResultStatus]:
        return [r.status for r in self.decoded(command_id, **kwargs)]

    def any_result(self) -> list[Got]:
        return [m for m in self.messages if m.topic.endswith("/commands/result")]

    def samples(self, vin: str = VIN) -> dict[int, Sample]:
        """Every sample that arrived, by seq, decoded as the gateway does."""
        out: dict[int, Sample] = {}
        for got in self.on(topic_for(vin, Channel.TELEMETRY)):
            decoded = decode_telemetry(got.payload, topic_vin=vin, now_ms=wall_clock_ms())
            assert decoded.rejections == (), decoded.rejections
            out.update((s.seq, s) for s in decoded.samples)
        return out


class Gateway:
    """Publishes commands as the gateway does: QoS 1, response topic, correlation data (the
    command id) and the message expiry interval."""

    def __init__(
        self, broker: MosquittoProcess, credentials: tuple[str, str] | None = None
    ) -> None:
        """``credentials``: a privileged (service) account on a broker that requires one."""
        self.broker = broker
        self.client = gmqtt.Client(f"gateway-{uuid.uuid4().hex[:8]}")
        if credentials is not None:
            self.client.set_auth_credentials(*credentials)

    async def __aenter__(self) -> Gateway:
        await self.client.connect(self.broker.host, self.broker.port, version=MQTTv50)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    def send(
        self,
        kind: CommandType | str,
        params: Mapping[str, ParamValue] | None = None,
        *,
        vin: str = VIN,
        to: str = VIN,
        ttl_ms: int = 30_000,
        issued_at: int | None = None,
        response_topic: str | None = "default",
        correlation: bytes | None = None,
        command_id: str | None = None,
        payload: bytes | None = None,
    ) -> str:
        """Publish a command for ``vin`` on ``to``'s command topic; return its id."""
        command_id = str(uuid.uuid4()) if command_id is None else command_id
        now = wall_clock_ms()
        issued = now if issued_at is None else issued_at
        command = CommandMessage(
            command_id, vin, C(kind), dict(params or {}), issued, issued + ttl_ms
        )
        properties: dict[str, Any] = {}
        if response_topic is not None:
            default = command_result_topic(vin)
            properties["response_topic"] = (
                default if response_topic == "default" else response_topic
            )
            properties["correlation_data"] = (
                command_id.encode() if correlation is None else correlation
            )
        expiry = message_expiry_interval(command, now_ms=now)
        if expiry is not None:
            properties["message_expiry_interval"] = expiry
        body = encode_command(command) if payload is None else payload
        self.client.publish(command_topic(to), body, qos=1, **properties)
        return command_id


class Taken:
    """``on_sample`` hook: every sample the unit takes, with its command counters then."""

    def __init__(self) -> None:
        self.unit: SimulatedUnit | None = None
        self.samples: list[tuple[int, int, Sample]] = []  # (accepted, answered, sample)

    def __call__(self, sample: Sample) -> None:
        assert self.unit is not None
        stats = self.unit.stats()
        self.samples.append((stats.commands_accepted, stats.commands_answered, sample))

    def first_after(self, *, answered: int) -> Sample | None:
        """The first sample taken once ``answered`` commands had their final answer."""
        return next((s for _, a, s in self.samples if a >= answered), None)


@dataclass
class Running:
    unit: SimulatedUnit
    taken: Taken
    task: asyncio.Task[Any]
    stop: asyncio.Event

    async def finish(self) -> None:
        self.stop.set()
        await self.task


async def start_unit(vehicle: SimulatedVehicle, settings: UnitSettings) -> Running:
    taken = Taken()
    unit = SimulatedUnit(vehicle, settings, first_seq=0, on_sample=taken)
    taken.unit = unit
    stop = asyncio.Event()
    task = asyncio.create_task(unit.run(stop))
    await until(lambda: unit.subscribed, "the unit's command subscription")
    return Running(unit, taken, task, stop)


async def answered(watcher: Watcher, command_id: str, count: int = 2, **kwargs: Any) -> None:
    await until(
        lambda: len(watcher.results(command_id, **kwargs)) >= count,
        f"{count} answer(s) to {command_id}",
    )
