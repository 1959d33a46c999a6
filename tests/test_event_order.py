"""Event ids are commit order, with two writing processes (issue 13, decision 0017).

A live stream keeps its place by event id (``gateway.notify.bus``): once it has read id N
it never looks below N again. So an event that commits after a higher id was already
readable is lost to every stream. The fleet worker and the API both write events; on
PostgreSQL a sequence hands ids out at insert, so :func:`gateway.statedb.events.publish`
takes an advisory lock first, held to the end of the transaction (SQLite's write lock
orders them by itself).

The API's command writer commits several writes in one transaction, each in a savepoint
(``StateDatabase.grouped``). A write that published and then failed is rolled back to its
savepoint, and PostgreSQL releases a lock taken inside a rolled-back savepoint: the next
write's events then got their ids without the lock, and a fleet worker's transaction that
committed meanwhile could be read past them. Here a real second process (the "worker")
publishes while the grouped transaction is open; a reader that follows the log by id, as
the stream does, must get every event of both.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from gateway.statedb import StateDatabase
from gateway.statedb.events import EventLog, publish

_OTHER_WRITER = """
import sys
from gateway.statedb import StateDatabase
from gateway.statedb.events import publish
db = StateDatabase(sys.argv[1])
with db.write() as session:
    publish(session, type="alert.raised", at=2, data={"by": "worker"}, account_id=None)
db.dispose()
"""


@pytest.fixture
def db(state_db_url: str) -> Iterator[StateDatabase]:
    database = StateDatabase(state_db_url)
    database.upgrade()
    yield database
    database.dispose()


class _Failed(Exception):
    pass


def _publish_then_fail(db: StateDatabase, *, on_connection: bool = False) -> None:
    if on_connection:  # the command writer's way (decision 0051): a savepoint on the cursor
        with db.write_transaction() as tx:
            publish(tx, type="command.updated", at=1, data={"by": "x"}, account_id=None)
            raise _Failed
    with db.write() as session:
        publish(session, type="command.updated", at=1, data={"by": "x"}, account_id=None)
        raise _Failed


def _follow(log: EventLog, cursor: int, seen: list[str]) -> int:
    """What a stream does: read after its cursor, move the cursor to the newest read."""
    for event in log.after(cursor):
        seen.append(event.data["by"])
        cursor = event.id
    return cursor


@pytest.mark.parametrize(
    ("failed_write_first", "on_connection"), [(False, False), (True, False), (True, True)]
)
def test_a_reader_following_ids_gets_every_event_of_two_writing_processes(
    db: StateDatabase, state_db_url: str, failed_write_first: bool, on_connection: bool
) -> None:
    reader = StateDatabase(state_db_url)  # another process's view (not this group's)
    log = EventLog(reader)
    seen: list[str] = []
    cursor = _follow(log, 0, seen)
    with db.grouped():
        if failed_write_first:  # a write that published, then failed: its savepoint undone
            with pytest.raises(_Failed):
                _publish_then_fail(db, on_connection=on_connection)
        with db.write_transaction() if on_connection else db.write() as session:
            publish(session, type="command.updated", at=1, data={"by": "api"}, account_id=None)
        worker = subprocess.Popen([sys.executable, "-c", _OTHER_WRITER, state_db_url])
        try:
            # the other process either waits for this transaction (correct) or commits
            # past it; give it the time to do the latter, reading the log meanwhile
            deadline = time.monotonic() + 5
            while worker.poll() is None and time.monotonic() < deadline:
                cursor = _follow(log, cursor, seen)
                time.sleep(0.05)
            cursor = _follow(log, cursor, seen)
        except BaseException:
            worker.kill()
            raise
    assert worker.wait(30) == 0
    _follow(log, cursor, seen)
    reader.dispose()
    assert sorted(seen) == ["api", "worker"]


def test_publish_many_returns_the_ids_its_rows_were_stored_under(db: StateDatabase) -> None:
    """Several events at once get their ids in their order, the ids the rows have (on
    SQLite numbered before the insert, without RETURNING: decision 0040), also after the
    newest row and one below it were deleted (SQLite then gives the highest rowid left
    plus one)."""
    from sqlalchemy import delete

    from gateway.statedb.events import NewEvent, publish_many
    from gateway.statedb.models import EventRow

    def many(n: int, tag: str) -> list[int]:
        with db.write() as session:
            events = [NewEvent("alert.raised", 1, {"n": i, "tag": tag}, None) for i in range(n)]
            return publish_many(session, events)

    first = many(4, "a")
    with db.write() as session:
        session.execute(delete(EventRow).where(EventRow.id.in_([first[1], first[3]])))
    second = many(3, "b")
    stored = {e.id: (e.data["tag"], e.data["n"]) for e in EventLog(db).after(0)}
    assert [stored[i] for i in second] == [("b", 0), ("b", 1), ("b", 2)]
    assert second == sorted(second)
    assert len(stored) == 5
