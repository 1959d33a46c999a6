"""The event bus of one API process: a poller and a bounded buffer in front of the event log.

Why poll the database: the command service runs in every API process and shares the
result topic with the others (``$share/telematics-commands/...``), so a command's update is
often recorded by another process than the one holding the caller's stream. The event log
is written in the transaction of each change (:func:`gateway.statedb.events.publish`), so
one ``SELECT ... WHERE id > last`` every ``event_poll_s`` (100 ms) per process, whatever
the number of streams, sees every process's events in commit order. Streams never query
the database themselves unless they resume from further back than the buffer holds.

Producers in this process may call :meth:`EventBus.poke` after committing to cut the wait.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable

from gateway.core.clock import wall_clock_ms
from gateway.notify.settings import NotifySettings
from gateway.statedb.events import EventLog, EventRecord

__all__ = ["EventBus"]

log = logging.getLogger(__name__)

_PRUNE_EVERY_MS = 60_000


class EventBus:
    """See the module docstring. :meth:`start` (reads the newest id), :meth:`stop`."""

    def __init__(
        self,
        events: EventLog,
        settings: NotifySettings,
        *,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.events = events
        self.settings = settings
        self._clock_ms = clock_ms
        self._ids: list[int] = []
        self._buffer: list[EventRecord] = []
        #: every event with floor < id <= last is in the buffer
        self._floor = 0
        self._last = 0
        self._new = asyncio.Event()
        self._poke = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0

    @property
    def last_id(self) -> int:
        return self._last

    async def start(self) -> None:
        self._floor = self._last = await asyncio.to_thread(self.events.last_id)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task

    def poke(self) -> None:
        """Look for new events now rather than at the next poll."""
        self._poke.set()

    async def wait(self, after_id: int, timeout_s: float) -> bool:
        """Wait until an event after ``after_id`` exists, at most ``timeout_s``; whether
        one does."""
        if self._last > after_id:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout_s)
        return self._last > after_id

    async def since(self, after_id: int, *, limit: int = 500) -> list[EventRecord]:
        """Events after ``after_id``, oldest first, at most ``limit``: from the buffer when
        it reaches back that far, else from the log."""
        if after_id >= self._floor:
            start = bisect.bisect_right(self._ids, after_id)
            return self._buffer[start : start + limit]
        return await asyncio.to_thread(self.events.after, after_id, limit=limit)

    async def first_id(self) -> int | None:
        """The oldest id the log still keeps (what a resuming stream can replay from)."""
        return await asyncio.to_thread(self.events.first_id)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._poll()
                await self._maybe_prune()
            except Exception:
                log.exception("reading the event log failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.settings.event_poll_s)
            self._poke.clear()

    async def _poll(self) -> None:
        while True:
            fresh = await asyncio.to_thread(self.events.after, self._last, limit=1000)
            if not fresh:
                return
            self._ids.extend(e.id for e in fresh)
            self._buffer.extend(fresh)
            self._last = fresh[-1].id
            excess = len(self._buffer) - self.settings.event_buffer
            if excess > self.settings.event_buffer // 2:  # trim in steps, not per event
                self._floor = self._ids[excess - 1]
                del self._ids[:excess], self._buffer[:excess]
            woken, self._new = self._new, asyncio.Event()
            woken.set()
            if len(fresh) < 1000:
                return

    async def _maybe_prune(self) -> None:
        now = self._clock_ms()
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY_MS
        before = now - int(self.settings.event_retention_s * 1000)
        for _ in range(100):  # at most 200,000 events a minute, in short chunks
            if await asyncio.to_thread(self.events.prune, before_at=before) == 0:
                return
            await asyncio.sleep(0.02)
