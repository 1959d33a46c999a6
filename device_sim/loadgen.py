"""A lightweight load generator: many vehicle connections, QoS 1, as fast as the broker acks.

The full simulator (:mod:`device_sim.unit`) models firmware and costs tens of microseconds of
Python per message. For throughput benchmarks we need the opposite: publishers so cheap that
the broker or the gateway is the bottleneck, not them. ``mosquitto_pub -l`` was measured at
~70 us of CPU per message (one process per vehicle, one syscall and poll per message), which
on a 2-core machine starved everything else. This module speaks just enough MQTT 5 (CONNECT,
PUBLISH QoS 1, PUBACK) over asyncio streams, writes pre-encoded PUBLISH packets in large
chunks, and keeps a bounded window of unacknowledged messages per connection.

It speaks only the public device contract: topics and payloads come from :mod:`schemas`.

``python -m device_sim.loadgen --port 1883 --vehicles 100 --messages-per-vehicle 2000``
prints ``ready`` once every connection is up, then publishes, then prints one JSON line of
figures. ``--rate`` paces the publishing (samples/s in total) and stamps each sample with the
time it is sent, for latency measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from schemas import Channel, Sample, SignalValue, encode_batch, encode_sample, topic_for

__all__ = [
    "LoadResult",
    "bench_signals",
    "bench_vin",
    "encode_publish",
    "fleet_signals",
    "heartbeat_signals",
    "main",
    "run_load",
]

#: signals of a typical periodic report (8 signals, ~300 bytes of JSON)
BENCH_SIGNALS: dict[str, SignalValue] = {
    "Vehicle.Speed": 48.5,
    "Vehicle.IsMoving": True,
    "Vehicle.TraveledDistance": 123456,
    "Vehicle.CurrentLocation.Latitude": 48.137154,
    "Vehicle.CurrentLocation.Longitude": 11.576124,
    "Vehicle.CurrentLocation.Heading": 87.5,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 76.4,
    "Vehicle.LowVoltageSystemState": "ON",
}


def bench_signals() -> dict[str, SignalValue]:
    return dict(BENCH_SIGNALS)


def bench_vin(i: int) -> str:
    return f"WBENCH{i:011d}"


#: the fleet profile: a speed cycle of this many samples, ``FLEET_FAST`` of them at
#: 110 km/h (above a 90 km/h limit: one overspeed alert per cycle), the rest at 50
FLEET_CYCLE = 40
FLEET_FAST = 10
#: vehicles drive north and south through a column of geofences: five columns
#: ``FLEET_COLUMN_DEG`` apart from ``FLEET_ORIGIN`` (lon, lat), over ``FLEET_SPAN_DEG`` of
#: latitude, ``FLEET_STEP_DEG`` per sample (about 33 m: 120 km/h at one sample a second)
FLEET_ORIGIN = (11.50, 48.09)
FLEET_COLUMN_DEG = 0.02
FLEET_SPAN_DEG = 0.1
FLEET_STEP_DEG = 0.0003


def fleet_signals(i: int, n: int) -> dict[str, SignalValue]:
    """Vehicle ``i``'s sample number ``n`` in the fleet profile (``telematics bench fleet``):
    a drive that crosses geofences, speeds once per cycle and runs its battery low once
    every 400 samples, so every sample gives the rules something to do."""
    phase = (n + i * 7) % FLEET_CYCLE
    bounce = ((n + i * 37) * FLEET_STEP_DEG) % (2 * FLEET_SPAN_DEG)
    offset = bounce if bounce < FLEET_SPAN_DEG else 2 * FLEET_SPAN_DEG - bounce
    return {
        "Vehicle.Speed": 110.0 if phase >= FLEET_CYCLE - FLEET_FAST else 50.0,
        "Vehicle.IsMoving": True,
        "Vehicle.TraveledDistance": 30 * n,
        "Vehicle.CurrentLocation.Latitude": round(FLEET_ORIGIN[1] + offset, 6),
        "Vehicle.CurrentLocation.Longitude": FLEET_ORIGIN[0] + (i % 5) * FLEET_COLUMN_DEG,
        "Vehicle.CurrentLocation.Heading": 0.0 if bounce < FLEET_SPAN_DEG else 180.0,
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": round(
            80.0 - ((n + i) % 400) * 0.2, 1
        ),
        "Vehicle.LowVoltageSystemState": "ON",
    }


def heartbeat_signals(i: int, n: int, *, driving: bool = False) -> dict[str, SignalValue]:
    """Vehicle ``i``'s full report number ``n``: the 28 signals an electric unit sends in a
    heartbeat (``device_sim.vehicle`` sends the same set), values varying by vehicle and
    report as a real one's do (position and speed while driving, slow drift parked)."""
    speed = round(30.0 + (n * 7 + i) % 70 + ((n + i) % 10) / 10, 1) if driving else 0.0
    lat = round(48.0 + (i % 1000) * 0.0007 + (n * 0.00013 if driving else 0.0), 6)
    lon = round(11.4 + (i // 1000 % 1000) * 0.0007 + (n * 0.00009 if driving else 0.0), 6)
    soc = round(85.0 - ((n + i) % 700) * 0.1, 1)
    return {
        "Vehicle.Speed": speed,
        "Vehicle.IsMoving": driving,
        "Vehicle.TraveledDistance": 12_000_000 + i * 17 + (n * 11 if driving else 0),
        "Vehicle.TraveledDistanceSinceStart": n * 11 if driving else 0,
        "Vehicle.CurrentLocation.Latitude": lat,
        "Vehicle.CurrentLocation.Longitude": lon,
        "Vehicle.CurrentLocation.Heading": float((n * 3 + i) % 360),
        "Vehicle.CurrentLocation.Altitude": round(510.0 + (n + i) % 40 / 10, 1),
        "Vehicle.CurrentLocation.HorizontalAccuracy": round(2.0 + (n + i) % 30 / 10, 1),
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": soc,
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed": round((soc - 2.5) / 0.95, 1),
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging": False,
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit": 80 + (i % 3) * 10,
        "Vehicle.Powertrain.Range": int(soc * 3_300),
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure": 240 + (n + i) % 9,
        "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": not driving,
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": False,
        "Vehicle.Cabin.Door.Row1.DriverSide.Window.Position": 0,
        "Vehicle.Cabin.HVAC.AmbientAirTemperature": round(18.0 + (n + i) % 50 / 10, 1),
        "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature": 21.5,
        "Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed": 40 if driving else 0,
        "Vehicle.Body.Lights.Hazard.IsSignaling": False,
        "Vehicle.Body.Horn.IsActive": False,
        "Vehicle.Exterior.AirTemperature": round(9.0 + (n + i) % 30 / 10, 1),
        "Vehicle.LowVoltageSystemState": "ON" if driving else "LOCK",
        "Vehicle.LowVoltageBattery.CurrentVoltage": round(12.4 + (n % 20) / 100, 2),
        "Vehicle.Diagnostics.DTCCount": 0,
        "Vehicle.Diagnostics.DTCList": [],
    }


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_publish(topic: bytes, payload: bytes, mid: int) -> bytes:
    """An MQTT 5 PUBLISH packet, QoS 1, no properties."""
    variable = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big") + b"\x00"
    return b"\x32" + _varint(len(variable) + len(payload)) + variable + payload


def _encode_connect(client_id: str, keepalive: int = 60) -> bytes:
    cid = client_id.encode()
    # protocol name, version 5, flags: clean start, keepalive, properties: none
    variable = b"\x00\x04MQTT\x05\x02" + keepalive.to_bytes(2, "big") + b"\x00"
    payload = len(cid).to_bytes(2, "big") + cid
    return b"\x10" + _varint(len(variable) + len(payload)) + variable + payload


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    return first, await reader.readexactly(length)


@dataclass(frozen=True, slots=True)
class LoadResult:
    connections: int
    messages: int
    samples: int
    acked: int
    seconds: float


class _Connection:
    def __init__(self, index: int, window: int) -> None:
        self.index = index
        self.vin = vin = bench_vin(index)
        self.topic = topic_for(vin, Channel.TELEMETRY).encode()
        self.window = asyncio.Semaphore(window)
        self.acked = 0
        self.next_mid = 0
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    def mid(self) -> int:
        self.next_mid = self.next_mid % 65535 + 1
        return self.next_mid

    async def open(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(_encode_connect(f"load-{self.vin}"))
        kind, body = await _read_packet(self.reader)
        if kind >> 4 != 2 or len(body) < 2 or body[1] != 0:
            code = body[1] if len(body) > 1 else None
            raise ConnectionError(f"broker refused {self.vin}: CONNACK reason code {code}")

    async def read_acks(self) -> None:
        while True:
            kind, _ = await _read_packet(self.reader)
            if kind >> 4 == 4:  # PUBACK
                self.acked += 1
                self.window.release()

    async def send(self, packets: Sequence[bytes], chunk: int) -> None:
        for start in range(0, len(packets), chunk):
            part = packets[start : start + chunk]
            for _ in part:
                await self.window.acquire()
            self.writer.write(b"".join(part))
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT, normal
        self.writer.close()
        await self.writer.wait_closed()


#: what a vehicle sends: (vehicle index, seq) -> signals; ``fleet``'s timestamps also
#: advance a second per sample when not paced (a drive, not one instant)
PROFILES: dict[str, Callable[[int, int], dict[str, SignalValue]]] = {
    "constant": lambda i, n: BENCH_SIGNALS,
    "fleet": fleet_signals,
}


def _payload(
    c: _Connection, seq: int, batch: int, ts: int, profile: str = "constant", step_ms: int = 0
) -> bytes:
    signals = PROFILES[profile]
    samples = [
        Sample(c.vin, seq + k, ts + k * step_ms, signals(c.index, seq + k)) for k in range(batch)
    ]
    return encode_sample(samples[0]) if batch == 1 else encode_batch(c.vin, samples)


async def run_load(
    *,
    host: str,
    port: int,
    vehicles: int,
    messages_per_vehicle: int,
    batch: int = 1,
    rate: float = 0.0,
    seq_base: int = 0,
    window: int = 1000,
    on_ready: Callable[[], None] | None = None,
    profile: str = "constant",
) -> LoadResult:
    """Publish ``messages_per_vehicle`` messages of ``batch`` samples from each of
    ``vehicles`` connections; with ``rate`` > 0, pace to that many samples/s in total and
    stamp each sample with its send time; otherwise send as fast as acknowledgements allow
    (timestamps are the generation time; in the ``fleet`` profile a second apart per
    sample, the newest now)."""
    connections = [_Connection(i, window) for i in range(vehicles)]
    await asyncio.gather(*(c.open(host, port) for c in connections))
    readers = [asyncio.create_task(c.read_acks()) for c in connections]
    total = vehicles * messages_per_vehicle
    try:
        if rate <= 0:
            ts = time.time_ns() // 1_000_000
            step = 1000 if profile == "fleet" else 0
            first = ts - step * messages_per_vehicle * batch
            plans = [
                [
                    encode_publish(
                        c.topic,
                        _payload(
                            c, seq_base + k * batch, batch, first + k * batch * step, profile, step
                        ),
                        c.mid(),
                    )
                    for k in range(messages_per_vehicle)
                ]
                for c in connections
            ]
            if on_ready:
                on_ready()
            started = time.perf_counter()
            await asyncio.gather(*(c.send(p, 100) for c, p in zip(connections, plans, strict=True)))
        else:
            if on_ready:
                on_ready()
            started = time.perf_counter()
            await _paced(connections, messages_per_vehicle, batch, rate, seq_base, profile)
        # every window slot back means every message acknowledged
        for c in connections:
            for _ in range(window):
                await c.window.acquire()
        elapsed = time.perf_counter() - started
    finally:
        for r in readers:
            r.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return LoadResult(
        connections=vehicles,
        messages=total,
        samples=total * batch,
        acked=sum(c.acked for c in connections),
        seconds=round(elapsed, 4),
    )


async def _paced(
    connections: list[_Connection],
    per_vehicle: int,
    batch: int,
    rate: float,
    seq_base: int,
    profile: str,
) -> None:
    messages_per_s = rate / batch
    total = len(connections) * per_vehicle
    sent = 0
    started = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * messages_per_s)) - sent
        if due > 0:
            ts = time.time_ns() // 1_000_000
            pending: dict[int, list[bytes]] = {}
            for n in range(sent, sent + due):
                i, k = n % len(connections), n // len(connections)
                c = connections[i]
                packet = encode_publish(
                    c.topic, _payload(c, seq_base + k * batch, batch, ts, profile), c.mid()
                )
                pending.setdefault(i, []).append(packet)
            for i, packets in pending.items():
                c = connections[i]
                for _ in packets:
                    await c.window.acquire()
                c.writer.write(b"".join(packets))
            sent += due
        await asyncio.sleep(0.002)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m device_sim.loadgen",
        description="Publish QoS 1 telemetry from many vehicle connections as cheaply as "
        "possible (for benchmarks). Prints 'ready' when connected, then one JSON line.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--vehicles", type=int, default=100, help="connections, one VIN each")
    p.add_argument("--messages-per-vehicle", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1, help="samples per message")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="samples/s in total; 0 = as fast as acknowledgements allow",
    )
    p.add_argument("--seq-base", type=int, default=0, help="first seq of every vehicle")
    p.add_argument(
        "--window", type=int, default=1000, help="unacknowledged messages per connection"
    )
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="constant",
        help="constant: the same signals in every sample; fleet: a drive through geofences "
        "that speeds and runs low (telematics bench fleet)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def ready() -> None:
        print("ready", flush=True)

    result = asyncio.run(
        run_load(
            host=args.host,
            port=args.port,
            vehicles=args.vehicles,
            messages_per_vehicle=args.messages_per_vehicle,
            batch=args.batch,
            rate=args.rate,
            seq_base=args.seq_base,
            window=args.window,
            on_ready=ready,
            profile=args.profile,
        )
    )
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
