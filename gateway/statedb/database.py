"""The connection to the state database: engine, sessions and migrations.

One :class:`StateDatabase` per process, shared by its threads (the engine and the session
factory are thread-safe; sessions are not, so every unit of work opens its own).

Two backends, chosen by URL:

* **SQLite** (the embedded default, :func:`default_url`): no server to run. WAL journal so
  readers never block the writer, ``synchronous=FULL`` because a command a person was told
  is ``queued`` must survive a power cut, foreign keys on (SQLite's default is off), a busy
  timeout so concurrent writers wait instead of failing, and ``check_same_thread=False``
  because pooled connections move between threads. pysqlite's own transaction handling is
  switched off (it would not BEGIN before a SELECT and cannot BEGIN IMMEDIATE); we emit BEGIN
  ourselves: deferred for reads, ``BEGIN IMMEDIATE`` for writes, which takes the write lock
  up front. A deferred transaction that reads and then writes can fail with SQLITE_BUSY
  without waiting when another writer committed in between; an immediate one waits its turn
  (busy timeout) and then reads the latest data, so read-modify-write is serialised. Reads
  and writes have an engine (and a pool) each, whose dialect emits its BEGIN
  (:class:`_SQLiteDialect`), not a "begin" event listener: one connection event listener
  makes SQLAlchemy dispatch every connection event (before and after each statement, begin,
  commit) on every connection of the engine, about 40 % of the Python function calls of a
  command's writes (decision 0041).
* **PostgreSQL** (``postgresql://...``, for several gateway hosts): always through psycopg 3
  (``postgresql+psycopg://``); read committed, with row locks where a read decides a write.

Migrations are Alembic's, kept inside the package (``migrations/``) and run from code
(:meth:`StateDatabase.upgrade`), so a deployment needs no ``alembic.ini`` and every process
brings the schema to head on start. To write a new revision, autogenerate it against a
database at head and review it::

    from alembic import command
    from gateway.statedb.database import StateDatabase, alembic_config

    with StateDatabase("sqlite:///scratch.db") as db, db.engine.begin() as connection:
        db.upgrade()
        command.revision(alembic_config(connection), message="...", autogenerate=True)
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection

from gateway.errors import ConfigurationError
from gateway.files import private_sqlite_file

__all__ = [
    "MIGRATIONS_DIR",
    "Backend",
    "StateDatabase",
    "WriteScope",
    "WriteTransaction",
    "alembic_config",
    "default_url",
]

logger = logging.getLogger(__name__)

#: the Alembic environment (env.py, script.py.mako, versions/)
MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")

Backend = Literal["sqlite", "postgresql"]

#: key of the PostgreSQL advisory lock that serialises migrations across processes and hosts
#: (a fixed signed 64-bit number derived from a name, so it cannot collide by accident)
_MIGRATION_LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"telematics-gateway/statedb/migrations").digest()[:8], "big", signed=True
)

#: the driver names of this module's SQLite dialects (see :class:`_SQLiteDialect`)
_SQLITE_READS: Final = "sqlite+telematics_reads"
_SQLITE_WRITES: Final = "sqlite+telematics_writes"

_SQLITE_DRIVERS: Final = frozenset({"sqlite", "sqlite+pysqlite"})
_POSTGRESQL_DRIVERS: Final = frozenset({"postgres", "postgresql", "postgresql+psycopg"})


def default_url(data_dir: Path | str) -> str:
    """The embedded database in the data directory: ``sqlite:///{data_dir}/state.db``.

    Separate from the telemetry store's file on purpose: the state database is small, written
    rarely and migrated by Alembic; the telemetry store is large, written in bulk and has a
    schema of its own.
    """
    return f"sqlite:///{Path(data_dir) / 'state.db'}"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration built in code (no ``alembic.ini``).

    ``connection`` is handed to ``migrations/env.py`` through ``Config.attributes``: the
    environment never opens connections of its own, so migrations run inside the caller's
    transaction (and under its lock).
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _parse_url(url: str) -> tuple[URL, Backend]:
    """Validate ``url`` and pin the driver; a bad URL is a :class:`ConfigurationError`."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"state database URL {url!r} is not a valid URL: {exc}") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.drivername in _SQLITE_DRIVERS:
        if parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory":
            raise ConfigurationError(
                f"state database URL {shown!r} is an in-memory SQLite database: every pooled "
                "connection would see a different, empty database; use a file "
                "(sqlite:///path/to/state.db)"
            )
        return parsed, "sqlite"
    if parsed.drivername in _POSTGRESQL_DRIVERS:
        return parsed.set(drivername="postgresql+psycopg"), "postgresql"
    raise ConfigurationError(
        f"state database URL {shown!r}: unsupported driver {parsed.drivername!r}; use "
        "sqlite:///path/to/state.db or postgresql://user:password@host:port/database "
        "(psycopg 3)"
    )


def _sqlite_connect_hook(busy_timeout_ms: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # hand transaction control to the dialect's BEGIN (_SQLiteDialect); module docstring
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            _enable_wal(cursor, busy_timeout_ms / 1000)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return on_connect


def _enable_wal(cursor: sqlite3.Cursor, timeout_s: float) -> None:
    """Switch the file to WAL (persistent: a no-op once any connection did it).

    Retried by hand because the switch needs an exclusive lock that SQLite does not wait for
    through the busy handler: when several processes open a brand-new file at once, all but
    one get "database is locked" at once (seen in the concurrent-upgrade test).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if mode != "wal":
            # e.g. a file system without shared memory; correct, only slower and less concurrent
            logger.warning("state database: SQLite refused WAL, journal mode stays %s", mode)
        return


class _SQLiteDialect(SQLiteDialect_pysqlite):
    """pysqlite, with the transaction's BEGIN emitted by the dialect (deferred: reads).

    pysqlite's own transaction handling is off (``isolation_level = None``, see the
    module docstring), so SQLAlchemy's "begin" reaches the database only through
    :meth:`do_begin`. SQLAlchemy's recipe emits it from a "begin" event listener instead;
    that one listener made the engine dispatch every connection event on every statement
    (decision 0041). The statement is the same, on the same connection, at the same moment.
    """

    #: what starts a transaction on this dialect's engine
    begin_statement = "BEGIN"
    #: SQLAlchemy caches compiled statements only for dialects that say they allow it
    supports_statement_cache = True

    def do_begin(self, dbapi_connection: PoolProxiedConnection) -> None:
        dbapi_connection.driver_connection.execute(self.begin_statement)  # type: ignore[union-attr]


class _SQLiteWriteDialect(_SQLiteDialect):
    """:class:`_SQLiteDialect` of the write engine: ``BEGIN IMMEDIATE`` takes the write lock
    up front (see the module docstring)."""

    begin_statement = "BEGIN IMMEDIATE"
    supports_statement_cache = True


registry.register(_SQLITE_READS.replace("+", "."), __name__, _SQLiteDialect.__name__)
registry.register(_SQLITE_WRITES.replace("+", "."), __name__, _SQLiteWriteDialect.__name__)


def _sqlite_engine(url: URL, driver: str, busy_timeout_ms: int, echo: bool) -> Engine:
    """An engine of the SQLite file at ``url`` through one of this module's dialects."""
    engine = create_engine(
        url.set(drivername=driver),
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
    )
    # a pool event: it adds no dispatch to the connections' statements
    event.listen(engine, "connect", _sqlite_connect_hook(busy_timeout_ms))
    return engine


class _WriteLock:
    """This process's queue for the SQLite write lock, where a background writer steps
    aside: it takes the lock only when it is free and no foreground writer waits."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = False
        self._foreground_waiting = 0

    @contextmanager
    def held(self, *, background: bool) -> Iterator[None]:
        with self._changed:
            if background:
                while self._held or self._foreground_waiting:
                    self._changed.wait()
            else:
                self._foreground_waiting += 1
                try:
                    while self._held:
                        self._changed.wait()
                finally:
                    self._foreground_waiting -= 1
            self._held = True
        try:
            yield
        finally:
            with self._changed:
                self._held = False
                self._changed.notify_all()


class WriteTransaction:
    """A write transaction on a connection, without an ORM session (decision 0051).

    The command writer's transactions run only Core statements (``gateway.statedb.prepared``);
    the ORM session around them (its construction, its transaction and identity map, its
    flush check and close) cost more CPU than the statements. This stands where the code
    they call takes a ``Session`` (:data:`WriteScope`): :meth:`connection` (the
    transaction's connection), ``info`` (a dict for this transaction's look-ups and the
    PostgreSQL event lock), :meth:`flush` and :meth:`get_bind`. What needs the ORM (a
    command job's end, rare) gets :attr:`session`, a session joined to this transaction
    (it neither commits nor rolls it back), flushed before the commit.
    """

    __slots__ = ("_connection", "_engine", "_group", "_nested", "_session", "info")

    def __init__(self, connection: Connection, engine: Engine, group: Session | None) -> None:
        self._connection = connection
        self._engine = engine
        #: the grouped() transaction's session this is a savepoint of, if any
        self._group = group
        self._session: Session | None = None
        #: inside grouped(): the group session's savepoint, once :attr:`session` was used
        self._nested: SessionTransaction | None = None
        self.info: dict[Any, Any] = group.info if group is not None else {}

    def connection(self) -> Connection:
        return self._connection

    def get_bind(self) -> Engine:
        return self._engine

    @property
    def session(self) -> Session:
        """An ORM session in this transaction (inside grouped(): the group's)."""
        if self._group is not None:
            if self._nested is None:
                # the ORM's own savepoint (inside this write's): a failure rolls back what
                # the session holds as well as what it wrote
                self._nested = self._group.begin_nested()
            return self._group
        if self._session is None:
            # joins the connection's transaction ("conservative_savepoint"): its commit,
            # rollback and close leave the transaction to this object's owner
            self._session = Session(bind=self._connection, expire_on_commit=False)
        return self._session

    def flush(self) -> None:
        """Write what was changed through :attr:`session` (nothing, if it was not used)."""
        session = self._session or self._group
        if session is not None:
            session.flush()

    def _end_nested(self, *, ok: bool) -> bool:
        """Inside grouped(): release (or roll back) the ORM's savepoint; whether there was one."""
        nested, self._nested = self._nested, None
        if nested is None:
            return False
        if nested.is_active:
            if ok:
                nested.commit()
            else:
                nested.rollback()
        return True

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


#: ``info`` key (a session's or a :class:`WriteTransaction`'s): its transaction holds
#: PostgreSQL's event lock (``gateway.statedb.events``)
EVENT_LOCK_HELD: Final = "event_lock"

#: what a write inside a caller's transaction takes: an ORM session, or a
#: :class:`WriteTransaction` (the command writer's)
WriteScope = Session | WriteTransaction


class StateDatabase:
    """Engine, session factories and migrations of the state database at ``url``.

    Creating one opens no connection; call :meth:`upgrade` before the first use, and
    :meth:`dispose` (or use it as a context manager) to release the pool.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000, echo: bool = False) -> None:
        self.url, self.backend = _parse_url(url)
        if self.backend == "sqlite":
            assert self.url.database is not None  # checked by _parse_url
            # accounts, password hashes, audit: readable by its owner only (0600)
            private_sqlite_file(Path(self.url.database))
            # reads (deferred BEGIN) and writes (BEGIN IMMEDIATE): an engine and a pool each
            self.engine: Engine = _sqlite_engine(self.url, _SQLITE_READS, busy_timeout_ms, echo)
            self._write_engine = _sqlite_engine(self.url, _SQLITE_WRITES, busy_timeout_ms, echo)
        else:
            # pre-ping: a PostgreSQL restart or failover must not surface as errors on the
            # pooled connections it killed
            self.engine = create_engine(self.url, echo=echo, pool_pre_ping=True)
            self._write_engine = self.engine
        self._write_lock = _WriteLock() if self.backend == "sqlite" else None
        #: this thread's grouped() transaction, if any
        self._group = threading.local()
        #: names of the command writes' savepoints inside grouped()
        self._savepoints = itertools.count(1)
        #: session factory for reads (SQLite: deferred transactions)
        self.sessions: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)
        #: session factory for writes (SQLite: BEGIN IMMEDIATE)
        self.write_sessions: sessionmaker[Session] = sessionmaker(
            self._write_engine, expire_on_commit=False
        )

    def __repr__(self) -> str:
        return f"StateDatabase({self.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> StateDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine of this database: reads' and writes' (one engine on PostgreSQL);
        what a listener of every statement (a test counting them) listens on."""
        if self._write_engine is self.engine:
            return (self.engine,)
        return (self.engine, self._write_engine)

    def dispose(self) -> None:
        """Close every pooled connection (the object may be used again: the pool refills).

        Call it on shutdown: a pooled connection left to the garbage collector is closed
        from whatever thread collects it, and PostgreSQL keeps its backend until then.
        """
        for engine in self.engines:
            engine.dispose()

    close = dispose

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session in a read transaction, closed at the end (commit, nothing to write).
        Inside :meth:`grouped`, the group's own session: a read sees the group's writes."""
        group: Session | None = getattr(self._group, "session", None)
        if group is not None:
            yield group
            return
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """:meth:`read` without the ORM session: a connection in a read transaction, for
        Core statements on the request path (the session's own setup cost more than an
        indexed read; decision 0036). Inside :meth:`grouped`, the group's connection."""
        group: Session | None = getattr(self._group, "session", None)
        if group is not None:
            yield group.connection()
            return
        with self.engine.connect() as connection, connection.begin():
            yield connection

    @contextmanager
    def write(self, *, background: bool = False) -> Iterator[Session]:
        """A session in a write transaction: committed at the end, rolled back on error.

        On SQLite the transaction holds the database's write lock from its first statement,
        so a read inside it sees the latest data and nothing changes it until commit. Writers
        of this process also queue on a lock of our own first: SQLite makes a writer that
        finds the file locked sleep and retry (1, 2, 5, 10 ... 100 ms), which measured as up
        to 400 ms of added command latency with ten concurrent requests; a queue of threads
        waiting on a lock is woken at once.

        ``background``: work no person waits for (the fleet rules worker, pruning) takes
        the lock only when no other writer of this process waits for it, so a command's
        transaction waits for at most one background transaction, never for a queue of
        them (docs/decisions/0022-command-latency-under-ingest.md).
        """
        group: Session | None = getattr(self._group, "session", None)
        if group is not None:  # inside grouped(): a savepoint of the group's transaction
            with group.begin_nested():
                yield group
            return
        if self._write_lock is None:
            with self.write_sessions.begin() as session:
                yield session
            return
        with self._write_lock.held(background=background), self.write_sessions.begin() as session:
            yield session

    @contextmanager
    def write_transaction(self) -> Iterator[WriteTransaction]:
        """:meth:`write` without the ORM session, for the command writer's Core statements
        (:class:`WriteTransaction`; decision 0051): the same lock, BEGIN, commit (or
        rollback on error) on the same engine. Inside :meth:`grouped`, a savepoint of the
        group's transaction, as :meth:`write`."""
        group: Session | None = getattr(self._group, "session", None)
        if group is not None:
            yield from self._group_savepoint(group)
            return
        lock: AbstractContextManager[None] = (
            nullcontext() if self._write_lock is None else self._write_lock.held(background=False)
        )
        with lock, self._write_engine.connect() as connection, connection.begin():
            transaction = WriteTransaction(connection, self._write_engine, None)
            try:
                yield transaction
                transaction.flush()
            finally:
                transaction._close()

    def _group_savepoint(self, group: Session) -> Iterator[WriteTransaction]:
        """A :class:`WriteTransaction` as a savepoint of the group's transaction, its
        SAVEPOINT, RELEASE and ROLLBACK TO on the DBAPI cursor: through the session
        (``begin_nested``) each was a statement compiled anew, a third of the writer's CPU
        when writes share commits (decision 0051). Same statements on the same connection;
        a rolled-back write also forgets the event lock (PostgreSQL releases a lock taken
        inside a savepoint rolled back to) and, if it used the ORM, what the session held."""
        connection = group.connection()
        name = f"command_write_{next(self._savepoints)}"
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(f"SAVEPOINT {name}")
            transaction = WriteTransaction(connection, self._write_engine, group)
            try:
                yield transaction
                transaction.flush()
                transaction._end_nested(ok=True)
            except BaseException:
                used_orm = transaction._end_nested(ok=False)
                cursor.execute(f"ROLLBACK TO SAVEPOINT {name}")
                cursor.execute(f"RELEASE SAVEPOINT {name}")
                group.info.pop(EVENT_LOCK_HELD, None)
                if used_orm:
                    group.expire_all()
                raise
            cursor.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            cursor.close()

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """One write transaction for every :meth:`write` this thread makes until the end of
        the block (group commit: one commit, one fsync, for many small writes). Each of
        them is a savepoint: one that raises is rolled back alone, and its caller sees the
        exception; the rest commit together at the end of the block, or, if the commit
        fails, not at all (the block raises)."""
        if getattr(self._group, "session", None) is not None:
            raise RuntimeError("grouped() does not nest")
        with self.write() as session:
            self._group.session = session
            try:
                yield
            finally:
                self._group.session = None

    # --- migrations ---------------------------------------------------------------------

    def upgrade(self) -> None:
        """Bring the schema to the newest revision; a no-op when it already is.

        Safe when several processes start at once: all migrations run in one transaction
        that first takes a lock (PostgreSQL: a transaction-scoped advisory lock; SQLite:
        ``BEGIN IMMEDIATE``). The winner migrates and commits; the others wait, then find
        the schema at head and do nothing. Both backends have transactional DDL, so a failed
        migration leaves the previous schema intact.
        """
        with self._write_engine.connect() as connection, connection.begin():
            if self.backend == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            before = MigrationContext.configure(connection).get_current_revision()
            command.upgrade(alembic_config(connection), "head")
            after = MigrationContext.configure(connection).get_current_revision()
        if before != after:
            logger.info("state database %r migrated from %s to %s", self, before, after)

    def current_revision(self) -> str | None:
        """The schema's Alembic revision (``None`` before the first :meth:`upgrade`)."""
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @staticmethod
    def head_revision() -> str | None:
        """The newest revision this code knows (what :meth:`upgrade` migrates to)."""
        return ScriptDirectory.from_config(alembic_config()).get_current_head()
