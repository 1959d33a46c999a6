"""Core statements compiled once per dialect and run on the DBAPI cursor of a connection.

The command writer runs the same few statements for every transition of every command
(the command row, its history row, the ``command.updated`` event, the audit entry). Through
SQLAlchemy's ``Connection.execute`` each of them cost ~100-190 µs of the interpreter
(cache key, execution context, parameter processing, result set-up, connection events)
against ~10-20 µs in SQLite itself: most of the API's CPU per command (decision 0045).

:class:`Prepared` keeps what SQLAlchemy would do for such a statement and does it once: the
SQL text and the order of its parameters for the dialect (SQLite's ``?``, psycopg's
``%(name)s`` with its casts), the values of the statement's own bound literals, the bind
processors of its columns (JSON to text) and the result processors of what it returns
(text to JSON on SQLite). Each call is then the DBAPI's ``execute`` on the connection's
cursor, inside the transaction the caller's SQLAlchemy connection (or session) has begun:
the same statement, on the same connection, in the same transaction as ``execute`` would
run it. Errors come out as SQLAlchemy's (``IntegrityError`` and its kin), as from
``execute``.

What it does not do: ORM objects, connection events (a listener of
``before_cursor_execute`` does not see these statements; SQLite's trace callback does),
Python-side column defaults (none of the tables it is used on has one), expanding ``IN``
parameters. Use it only for statements that run per command; everything else keeps
``Connection.execute``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["Prepared"]

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: parameter names in order (positional paramstyles), None for named ones
    order: tuple[str, ...] | None
    #: the statement's own bound values (literals in its WHERE clause)
    defaults: Mapping[str, Any]
    binds: tuple[tuple[str, Callable[[Any], Any]], ...]
    results: tuple[_Processor, ...]

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        merged = {**self.defaults, **values} if self.defaults else dict(values)
        for name, process in self.binds:
            value = merged.get(name)
            if value is not None:
                merged[name] = process(value)
        if self.order is None:
            return merged
        return tuple(merged[name] for name in self.order)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not any(self.results):
            return tuple(raw)
        return tuple(
            value if process is None or value is None else process(value)
            for process, value in zip(self.results, raw, strict=True)
        )


class Prepared:
    """One Core statement (see the module docstring); thread-safe (its compilations are
    kept per dialect and set of parameter names; building one twice is harmless)."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}

    def _for(self, dialect: Dialect, keys: Iterable[str]) -> _Compiled:
        names = frozenset(keys)
        key = (dialect.name, names)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile(dialect, names)
        return found

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect, column_keys=sorted(names))
        assert isinstance(compiled, SQLCompiler)
        if compiled.escaped_bind_names:  # names psycopg cannot take as they are: not ours
            raise ValueError(f"unsupported parameter names: {dict(compiled.escaped_bind_names)}")
        defaults = {
            name: value
            for name, value in compiled.construct_params(_check=False).items()
            if name not in names and value is not None and not _is_required(value)
        }
        processors = compiled._bind_processors
        results = tuple(
            entry[3]._cached_result_processor(dialect, None) for entry in compiled._result_columns
        )
        return _Compiled(
            sql=compiled.string,
            order=None if compiled.positiontup is None else tuple(compiled.positiontup),
            defaults=defaults,
            binds=tuple((name, process) for name, process in processors.items() if process),  # type: ignore[misc]
            results=results,
        )

    # --- running it ---------------------------------------------------------------------

    def execute(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """Run it with ``values`` in ``connection``'s transaction; the DBAPI cursor."""
        compiled = self._for(connection.dialect, values)
        parameters = compiled.parameters(values)
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, parameters)
        except Exception as exc:
            cursor.close()
            raise _wrapped(connection.dialect, compiled.sql, parameters, exc) from exc
        return cursor

    def executemany(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row of ``rows`` (all with the same names), nothing returned."""
        if not rows:
            return
        compiled = self._for(connection.dialect, rows[0])
        parameters: Any = [compiled.parameters(row) for row in rows]
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, parameters)
        except Exception as exc:
            raise _wrapped(connection.dialect, compiled.sql, parameters, exc) from exc
        finally:
            cursor.close()

    def first(self, connection: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row it returns (processed as ``execute`` would), or None."""
        compiled = self._for(connection.dialect, values)
        cursor = self.execute(connection, values)
        try:
            raw = cursor.fetchone()
        finally:
            cursor.close()
        return None if raw is None else compiled.row(raw)

    def all(self, connection: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        compiled = self._for(connection.dialect, values)
        cursor = self.execute(connection, values)
        try:
            return [compiled.row(raw) for raw in cursor.fetchall()]
        finally:
            cursor.close()

    def scalar(self, connection: Connection, values: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None."""
        row = self.first(connection, values)
        return None if row is None else row[0]


def _is_required(value: Any) -> bool:
    """SQLAlchemy's marker of a parameter without a value (``symbol('REQUIRED')``)."""
    return type(value).__name__ == "symbol"


def _wrapped(dialect: Dialect, sql: str, parameters: Any, exc: Exception) -> Exception:
    """The DBAPI's exception as SQLAlchemy's ``execute`` raises it (``IntegrityError`` for
    a unique violation, and so on); anything else unchanged."""
    dbapi = dialect.loaded_dbapi
    if isinstance(exc, dbapi.Error):
        return DBAPIError.instance(sql, parameters, exc, dbapi.Error, dialect=dialect)
    return exc
