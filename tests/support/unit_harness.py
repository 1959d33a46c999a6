"""Running a simulated unit against a test broker: settings, an observer of its topics,
and helpers to run and wait."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50

from device_sim.unit import UnitSettings, wall_clock_ms
from gateway.broker import MosquittoProcess
from schemas import (
    Channel,
    Sample,
    decode_telemetry,
    topic_for,
)

DEADLINE_S = 8.0  # for one condition; far above what any of them needs
TEST_TIMEOUT_S = 30.0  # for a whole test, a safety net


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await coro

    asyncio.run(bounded())


async def until(predicate: Callable[[], bool], what: str, within_s: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``within_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {within_s:g} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One telemetry message: a batch (``{"vin", "samples": [...]}``) or a single sample."""

    batch: bool
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Observer:
    """A plain MQTT 5 subscriber that records every message it gets, in order."""

    def __init__(
        self,
        broker: MosquittoProcess,
        topic: str = "v1/vehicles/#",
        *,
        client_id: str = "observer",
        persistent: bool = False,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[Received] = []
        kwargs: dict[str, Any] = {"session_expiry_interval": 600} if persistent else {}
        self.client = gmqtt.Client(client_id, clean_session=not persistent, **kwargs)
        self.client.reconnect_delay = 0.1
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribed = False

    def _on_message(self, client: Any, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.messages.append(Received(topic, payload, bool(props.get("retain"))))
        return 0

    def _on_subscribe(self, client: Any, mid: int, qos: Any, props: Any) -> None:
        self._subscribed = True

    async def __aenter__(self) -> Observer:
        await self.client.connect(self.broker.host, self.broker.port, version=MQTTv50)
        self.client.subscribe(self.topic, qos=1)
        await until(lambda: self._subscribed, f"SUBACK for {self.topic}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.disconnect()

    def on(self, vin: str, channel: Channel) -> list[Received]:
        topic = topic_for(vin, channel)
        return [m for m in self.messages if m.topic == topic]

    def telemetry(self, vin: str) -> list[Telemetry]:
        """The telemetry messages of ``vin`` in arrival order, checked against the contract."""
        out = []
        for message in self.on(vin, Channel.TELEMETRY):
            decoded = decode_telemetry(message.payload, topic_vin=vin, now_ms=wall_clock_ms())
            assert decoded.rejections == (), decoded.rejections
            batch = "samples" in json.loads(message.payload)
            out.append(Telemetry(batch, decoded.samples))
        return out

    def batches(self, vin: str) -> list[Telemetry]:
        return [m for m in self.telemetry(vin) if m.batch]


def settings(broker: MosquittoProcess, **overrides: Any) -> UnitSettings:
    values: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "report_interval_s": 0.02,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.4,
        "drain_timeout_s": 2.0,
    }
    values.update(overrides)
    return UnitSettings(**values)
