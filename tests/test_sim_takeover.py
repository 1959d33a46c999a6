"""Two processes driving the same vehicles: the broker allows one connection per client id
(the VIN), so each connection takes the other's over. The simulator says so and stops,
instead of reconnecting forever with "cannot reach" in its log.

Mosquitto 2.0.11 (the broker here) just closes the connection that was taken over; later
brokers send DISCONNECT with reason 0x8E "session taken over" first. The first case is
tested with two real simulators on a real broker; the second with a stand-in broker that
sends exactly that packet, because the installed Mosquitto cannot be made to send it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from device_sim.city import DEPOT, MUNICH
from device_sim.credentials import write_credentials
from device_sim.fleet import fleet_vins
from device_sim.unit import SimulatedUnit, UnitSettings, UnitTakenOver
from device_sim.vehicle import SimulatedVehicle, VehicleProfile
from tests.support.sim_credentials import credentials_for, secured_broker

TAKEN_OVER = "Another process is driving"


def _start(credentials: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "device_sim", "--credentials", str(credentials), "--rate", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_simulators_with_the_same_vehicles_one_stops_and_says_why(tmp_path: Path) -> None:
    vins = fleet_vins(2)
    with secured_broker(tmp_path, vins) as broker:
        path = tmp_path / "units.json"
        write_credentials(path, credentials_for(broker, vins))
        first = _start(path)
        try:
            time.sleep(2)  # let the first one connect its units
            assert first.poll() is None
            second = _start(path)
            try:
                deadline = time.monotonic() + 60
                while first.poll() is None and second.poll() is None:
                    assert time.monotonic() < deadline, "both still fighting after 60 s"
                    time.sleep(0.1)
                loser, winner = (first, second) if first.poll() is not None else (second, first)
                _, err = loser.communicate(timeout=30)
                assert loser.returncode == 1, err
                (message,) = [line for line in err.splitlines() if "device_sim: error:" in line]
                assert TAKEN_OVER in message
                assert "another client keeps connecting with its client id" in message
                assert str(path) in message
                assert "cannot reach" not in err
                time.sleep(3)  # the other one has the vehicles now and keeps them
                assert winner.poll() is None
            finally:
                for process in (first, second):
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
            _, err = winner.communicate(timeout=60)
            assert winner.returncode == 0, err
            assert TAKEN_OVER not in err
        finally:
            for process in (first, second):
                if process.poll() is None:
                    process.kill()
                    process.wait()


# --- a broker that says "session taken over" ------------------------------------------------------

#: CONNACK, MQTT 5: no session present, reason 0 (success), no properties
_CONNACK = bytes([0x20, 0x03, 0x00, 0x00, 0x00])
#: DISCONNECT, MQTT 5: reason 0x8E (session taken over), no properties
_TAKEN_OVER = bytes([0xE0, 0x02, 0x8E, 0x00])


async def _read_packet(reader: asyncio.StreamReader) -> int:
    """Read one MQTT packet; return its type (the upper four bits of its first byte)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    await reader.readexactly(length)
    return first >> 4


@asynccontextmanager
async def broker_that_takes_sessions_over() -> AsyncIterator[int]:
    """Accepts every CONNECT, and a moment later ends the connection as a broker does when
    another client connected with the same client id; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await _read_packet(reader) == 1:  # CONNECT
                writer.write(_CONNACK)
                await writer.drain()
                await asyncio.sleep(0.3)
                writer.write(_TAKEN_OVER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def test_disconnect_session_taken_over_stops_the_unit_at_once() -> None:
    async def run() -> None:
        async with broker_that_takes_sessions_over() as port:
            vin = fleet_vins(1)[0]
            vehicle = SimulatedVehicle(
                vin, VehicleProfile.ELECTRIC_CAR, MUNICH, random.Random(1), DEPOT
            )
            unit = SimulatedUnit(vehicle, UnitSettings(host="127.0.0.1", port=port))
            with pytest.raises(UnitTakenOver, match=r"session taken over \(MQTT reason 0x8E\)"):
                async with asyncio.timeout(10):
                    await unit.run(asyncio.Event())
            assert unit.stats().connects == 1  # it did not reconnect

    asyncio.run(run())
