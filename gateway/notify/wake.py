"""Waking the API processes of this machine when another process stored events.

The event log is the one channel between processes (``gateway.notify.bus``): every API
process polls it every ``event_poll_s`` (100 ms), so an alert stored by a fleet-worker
process (decision 0029) reached the streams up to 100 ms later than one stored by a rules
thread inside the API, which pokes its bus directly. This closes that gap without polling
faster: each API process listens on a Unix datagram socket in the data directory's
``wake/`` (``api-PID.sock``); a process that committed events sends one empty datagram to
every socket there (:func:`wake_all`), and the listener pokes the bus and the webhook
worker. A datagram is a hint, not a message: a lost one (a full buffer, a process between
its start and its bind) costs at most the next poll, which goes on as before. Installations
whose processes do not share a data directory (other machines, a shared PostgreSQL state
database) rely on the poll alone.

The fleet-worker processes listen the same way (``fleet-PID.sock``, :class:`WakeSocket`, a
blocking socket for a thread; decision 0063): the gateway wakes them after each commit that
stored samples or events, so a worker that has caught up starts its next pass when there is
something to evaluate instead of at its next poll. :func:`wake_all` reaches one kind
(``prefix``): the API's or the workers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["API_PREFIX", "FLEET_PREFIX", "WAKE_DIR_NAME", "WakeListener", "WakeSocket", "wake_all"]

log = logging.getLogger(__name__)

#: the directory of the listeners' sockets, inside the data directory
WAKE_DIR_NAME = "wake"
#: the longest path a Unix socket address takes (Linux: 108 bytes with the final NUL)
_MAX_PATH = 107
#: the API processes' sockets (woken when events were stored)
API_PREFIX = "api-"
#: the fleet-worker processes' sockets (woken when telemetry was committed)
FLEET_PREFIX = "fleet-"


class _Poke(asyncio.DatagramProtocol):
    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._poke()


def _make_room(path: Path, otherwise: str) -> bool:
    """Whether a socket can be bound at ``path``: short enough, its directory made, a file
    left by a dead process of the same id removed (logged with ``otherwise`` when not)."""
    if len(os.fsencode(str(path))) > _MAX_PATH:
        log.info("no wake-up socket (%s is too long a path): %s", path, otherwise)
        return False
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.unlink(missing_ok=True)  # a process of the same id that died
    except OSError as exc:
        log.info("no wake-up socket at %s (%s): %s", path, exc, otherwise)
        return False
    return True


class WakeListener:
    """Calls ``poke`` on the event loop whenever a datagram arrives on this process's
    socket in ``directory``. :meth:`start` (False: no socket, the poll alone serves),
    :meth:`stop` (removes the socket)."""

    def __init__(self, directory: Path, poke: Callable[[], None]) -> None:
        self.path = directory / f"{API_PREFIX}{os.getpid()}.sock"
        self._poke = poke
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> bool:
        if not _make_room(self.path, "events are polled"):
            return False
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Poke(self._poke), local_addr=str(self.path), family=socket.AF_UNIX
            )
        except OSError as exc:
            log.info("no wake-up socket at %s (%s): events are polled", self.path, exc)
            return False
        self._transport = transport
        return True

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self.path.unlink(missing_ok=True)


def wake_all(directory: Path, prefix: str = API_PREFIX) -> int:
    """Send a wake-up to every listener of one kind (``prefix``) in ``directory``; how many
    took it. Never blocks and never raises: a listener that is gone (its socket refuses)
    has its file removed."""
    try:
        paths = list(directory.glob(f"{prefix}*.sock"))
    except OSError:
        return 0
    if not paths:
        return 0
    woken = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for path in paths:
            try:
                sock.sendto(b"!", str(path))
                woken += 1
            except BlockingIOError:  # its buffer is full: it has wake-ups waiting already
                woken += 1
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()
            except OSError:
                pass
    return woken


class WakeSocket:
    """A fleet-worker's wake-up socket in ``directory`` (``fleet-PID.sock``), read by a
    thread: :meth:`wait` returns True when a wake-up came within ``timeout`` (every one
    waiting is taken), False when the time ran out. :meth:`open` (False: no socket, the
    caller polls), :meth:`close` (removes it)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{FLEET_PREFIX}{os.getpid()}.sock"
        self._sock: socket.socket | None = None

    def open(self) -> bool:
        if not _make_room(self.path, "the worker polls"):
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            log.info("no wake-up socket at %s (%s): the worker polls", self.path, exc)
            return False
        self._sock = sock
        return True

    def wait(self, timeout: float) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            ready, _, _ = select.select([sock], [], [], max(timeout, 0.0))
            if not ready:
                return False
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while sock.recv(16):  # the wake-ups that piled up: one pass serves them all
                    pass
            sock.setblocking(True)
        except (OSError, ValueError):  # closed meanwhile
            return False
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            self.path.unlink(missing_ok=True)
