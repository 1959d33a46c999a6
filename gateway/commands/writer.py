"""The command service's writes to the state database, off the event loop and grouped.

Every transition of a command is a write transaction, and with ``synchronous=FULL`` each
commit waits for the disk (fsync). Done on the event loop (as before issue 17), every
request, every MQTT answer and every timer of the API process waited for each of those
flushes, and for any other writer holding the database's write lock (the fleet rules
worker); under telemetry load the disk's flushes slow down (the journal also carries the
telemetry database's writes) and the loop stalled for seconds
(docs/decisions/0022-command-latency-under-ingest.md).

:class:`GroupWriter` runs the writes on one thread of its own. Whatever has been handed
to it while it was committing goes into the next transaction together (group commit:
``StateDatabase.grouped``), each write a savepoint, so one that fails (an illegal
transition) fails alone; a write that finds nobody waiting with it (a calm machine) is
simply its own transaction, without the group's savepoint. A write's awaitable resolves
only after its transaction has committed, so nothing is published or answered before it
is durable, and writes are applied in the order they were handed over (an ``accepted``
before its ``succeeded``).

A unit's ``accepted`` and its final answer arrive within about a millisecond of each other,
but the writer picked the ``accepted`` up alone, the moment it was handed over, and the
final answer waited for that fsync and then committed alone too: two commits per command
where one would do (decision 0064, "One commit per answer pair"). A write handed over as
``follows=True`` (one another write is expected right behind) therefore lets the writer
wait up to :data:`LINGER_S` for more before it begins the transaction, once per
transaction, and only when that write is the last one it has: a lone write is delayed by
at most that much, and nothing else waits at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.statedb.database import StateDatabase

__all__ = ["GroupWriter"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the most writes in one transaction
MAX_GROUP = 64
#: the most a transaction waits for the write that follows a ``follows=True`` one
LINGER_S = 0.0015

_Item = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop, bool]


class GroupWriter:
    """See the module docstring. :meth:`start` on the event loop, :meth:`stop` at the end."""

    def __init__(
        self,
        db: StateDatabase,
        *,
        max_group: int = MAX_GROUP,
        linger_s: float = LINGER_S,
        on_commit: Callable[[int, float, float], None] | None = None,
    ) -> None:
        self._db = db
        self._max_group = max_group
        self._linger_s = linger_s
        #: called after each commit (on the writer's thread) with the number of writes,
        #: the ms waited for the write lock and the ms the transaction took after it
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        #: transactions committed and writes in them (for tests and the decision's figures)
        self.transactions = 0
        self.writes = 0

    @property
    def native_id(self) -> int | None:
        """The writer thread's id in the operating system (None before :meth:`start`)."""
        return None if self._thread is None else self._thread.native_id

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="command-writer", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def submit(self, write: Callable[[], T], *, follows: bool = False) -> asyncio.Future[T]:
        """Hand ``write`` (a call of the repository's that writes) to the writer thread;
        the future has its result, or its exception, once its transaction committed.
        ``follows``: another write is expected right behind this one (a unit's final
        answer behind its ``accepted``): worth a wait of up to ``linger_s`` to share its
        commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:  # not started (unit tests of the service): write here
            try:
                future.set_result(write())
            except Exception as exc:
                future.set_exception(exc)
            return future
        self._queue.put((write, future, loop, follows))
        return future

    async def write(self, write: Callable[[], T]) -> T:
        return await self.submit(write)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = self._take_queued(group)
            if not stopping and group[-1][3] and len(group) < self._max_group:
                # the write behind it is on its way: wait for it (once, briefly)
                with contextlib.suppress(queue.Empty):
                    item = self._queue.get(timeout=self._linger_s)
                    if item is None:
                        self._queue.put(None)  # stop after this group
                    else:
                        group.append(item)
                        self._take_queued(group)
            self._commit(group)

    def _take_queued(self, group: list[_Item]) -> bool:
        """Add to ``group`` what is queued now (up to the group's limit); whether the stop
        marker came (put back, to stop after this group)."""
        while len(group) < self._max_group:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                self._queue.put(None)
                return True
            group.append(item)
        return False

    def _commit(self, group: list[_Item]) -> None:
        started = time.perf_counter()
        locked = started
        if len(group) == 1:
            # alone: its own transaction, as the repository's call makes it (no group, no
            # savepoint: two statements and a nested transaction fewer; decision 0036)
            outcomes = [self._alone(group[0][0])]
        else:
            outcomes = []
            try:
                with self._db.grouped():
                    locked = time.perf_counter()
                    for write, _, _, _ in group:
                        try:
                            outcomes.append((True, write()))
                        except Exception as exc:  # this write alone; its caller gets it
                            outcomes.append((False, exc))
            except Exception as exc:  # the commit failed: none of them is stored
                log.warning("a grouped commit of %d command writes failed: %s", len(group), exc)
                outcomes = [(False, exc)] * len(group)
                self._settle_all(group, outcomes)
                return
        self.transactions += 1
        self.writes += len(group)
        if self._on_commit is not None:
            done = time.perf_counter()
            self._on_commit(len(group), (locked - started) * 1000, (done - locked) * 1000)
        self._settle_all(group, outcomes)

    @staticmethod
    def _alone(write: Callable[[], Any]) -> tuple[bool, Any]:
        try:
            return True, write()
        except Exception as exc:  # rolled back by the repository's own transaction
            return False, exc

    @staticmethod
    def _settle_all(group: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
        for (_, future, loop, _), (ok, value) in zip(group, outcomes, strict=True):
            try:
                loop.call_soon_threadsafe(_settle, future, ok, value)
            except RuntimeError:  # its loop has closed: nobody waits any more
                continue


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # its waiter was cancelled
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
