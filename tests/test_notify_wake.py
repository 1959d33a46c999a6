"""The wake-up sockets between the fleet-worker processes and the API processes of one
data directory (``gateway.notify.wake``, decision 0029): a datagram pokes at once, a dead
listener's socket is cleared, and a path too long for a socket leaves the poll alone."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.notify.wake import WakeListener, wake_all


def test_a_wake_up_reaches_every_listener_and_a_dead_ones_socket_is_removed(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "wake"

    async def scenario() -> None:
        pokes: list[int] = []
        first = WakeListener(directory, lambda: pokes.append(1))
        second = WakeListener(directory / "other", lambda: pokes.append(2))
        assert await first.start()
        assert await second.start()
        dead = directory / "api-999999999.sock"  # bound once, its process gone
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(dead))
        assert wake_all(directory) == 1
        for _ in range(200):
            if pokes:
                break
            await asyncio.sleep(0.01)
        assert pokes == [1]
        assert not dead.exists()
        assert wake_all(directory / "other") == 1
        for _ in range(200):
            if len(pokes) == 2:
                break
            await asyncio.sleep(0.01)
        assert pokes == [1, 2]
        first.stop()
        second.stop()
        assert not first.path.exists()
        assert wake_all(directory) == 0

    asyncio.run(scenario())


def test_without_a_socket_nothing_fails(tmp_path: Path) -> None:
    assert wake_all(tmp_path / "missing") == 0

    async def scenario() -> None:
        long_dir = tmp_path / ("x" * 120)
        assert not await WakeListener(long_dir, lambda: None).start()

    asyncio.run(scenario())
