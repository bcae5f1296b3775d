"""The hottest statements, run straight on the driver.

SQLAlchemy's work around one execution (an execution context, parameter and result
bookkeeping, events) costs more CPU than SQLite's own work for a one-row insert or
update: measured here, an upload's insert and update, each in its transaction, took 167
microseconds of CPU through ``Connection.execute`` and 120 this way (60 of which are
SQLite's). ``DriverStatement`` compiles a Core
statement once per dialect and, on SQLite, executes it on the DBAPI cursor of the same
connection (so inside the same transaction), converting each value with its column
type's own bind processor: the stored values are exactly those SQLAlchemy would store.
Other dialects go through ``Connection.execute`` as usual, except on a
``DriverConnection``: PostgreSQL work whose statements each stand alone (``Database.run``
with ``transaction=False``) runs them on asyncpg's connection itself, with the same bind
and result processing (SQLAlchemy's execution around a one-row statement cost about
four times asyncpg's own work: 330 microseconds of CPU against 70 for a status read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Column, Connection, Select
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.util.concurrency import await_


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]
    # The values the statement itself binds (literals in it, an OFFSET), by position;
    # ``_GIVEN`` where the caller's parameter goes.
    fixed: tuple[Any, ...]
    # When the caller gives every value (an insert, a settle): all of them picked at
    # once, in order, and the positions of those a processor converts.
    pick: Callable[[Mapping[str, Any]], Any] | None = None
    converted: tuple[tuple[int, Callable[[Any], Any]], ...] = ()
    # What it returns (a select, ``RETURNING``): each column's name and result processor.
    result_names: tuple[str, ...] = ()
    result_processors: tuple[Callable[[Any], Any] | None, ...] = ()


_GIVEN = object()


def _converted(
    value: Any, convert: Callable[[Any], Any], memo: dict[tuple[int, int], tuple[Any, Any]]
) -> Any:
    """``convert(value)``, once per value object in an execution (``memo``)."""
    key = (id(value), id(convert))
    done = memo.get(key)
    if done is None or done[0] is not value:
        done = memo[key] = (value, convert(value))
    return done[1]


class DriverStatement:
    def __init__(
        self,
        statement: UpdateBase | Select[Any],
        columns: Mapping[str, Column[Any]],
    ) -> None:
        """``columns``: the column each bound parameter is stored in (or compared with),
        by parameter name (an insert sets exactly these columns). Values the statement
        binds itself are bound as SQLAlchemy would."""
        self.statement = statement
        self.columns = columns
        self._compiled: dict[str, _Compiled] = {}  # by dialect

    def execute(
        self, connection: Connection | DriverConnection, params: dict[str, Any]
    ) -> tuple[int, int | None]:
        """Runs the statement; returns the rows it changed and the last inserted row id."""
        if isinstance(connection, DriverConnection):
            return connection.execute(self, params)
        if connection.dialect.name != "sqlite":
            result = connection.execute(self.statement, params)
            inserted = result.inserted_primary_key if self.statement.is_insert else None
            return int(result.rowcount), inserted[0] if inserted else None
        with self._driver_cursor(connection, params) as cursor:
            return int(cursor.rowcount), cursor.lastrowid

    def rows(self, connection: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Runs a statement that returns rows (``RETURNING``, a select); its rows, as the
        driver gives them (no result processing: columns of plain types only)."""
        if connection.dialect.name != "sqlite":
            return [tuple(row) for row in connection.execute(self.statement, params)]
        with self._driver_cursor(connection, params) as cursor:
            return list(cursor.fetchall())

    def mappings(
        self, connection: Connection | DriverConnection, params: dict[str, Any]
    ) -> list[Mapping[str, Any]]:
        """Runs a statement that returns rows; each row by column name, with the values
        SQLAlchemy's result processing gives (JSON decoded, datetimes as stored)."""
        if isinstance(connection, DriverConnection):
            compiled = self.compiled_for(connection.dialect)
            names, processors = compiled.result_names, compiled.result_processors
            return [
                {
                    name: value if process is None else process(value)
                    for name, value, process in zip(names, row, processors, strict=True)
                }
                for row in connection.fetch(self, params)
            ]
        rows = connection.execute(self.statement, params)
        return cast(list[Mapping[str, Any]], [row._mapping for row in rows])

    def compiled_for(self, dialect: Dialect) -> _Compiled:
        return self._compiled.get(dialect.name) or self._compile(dialect)

    @contextmanager
    def _driver_cursor(self, connection: Connection, params: Mapping[str, Any]) -> Iterator[Any]:
        """The statement executed with ``params`` on the connection's DBAPI cursor."""
        compiled = self.compiled_for(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.sql, self._values(compiled, params, {}))
            yield cursor
        finally:
            cursor.close()

    @staticmethod
    def _values(
        compiled: _Compiled, params: Mapping[str, Any], memo: dict[tuple[int, int], tuple[Any, Any]]
    ) -> list[Any]:
        """The driver's values of ``params``. ``memo``: values already converted in this
        execution (one moment bound to every row of a batch is converted once: a
        datetime's conversion costs more than the rest of a row)."""
        if compiled.pick is not None:
            values = list(compiled.pick(params))
            for at, convert in compiled.converted:
                values[at] = _converted(values[at], convert, memo)
            return values
        values = []
        for name, fixed, process in zip(compiled.names, compiled.fixed, compiled.processors, strict=True):
            value = params[name] if fixed is _GIVEN else fixed
            values.append(value if process is None else _converted(value, process, memo))
        return values

    def execute_many(self, connection: Connection, rows: list[dict[str, Any]]) -> None:
        """Runs the statement once per parameter set (one driver call on SQLite)."""
        if connection.dialect.name != "sqlite":
            connection.execute(self.statement, rows)
            return
        compiled = self.compiled_for(connection.dialect)
        memo: dict[tuple[int, int], tuple[Any, Any]] = {}
        values = [self._values(compiled, params, memo) for params in rows]
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, values)
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect) -> _Compiled:
        statement = self.statement
        column_keys = list(self.columns) if statement.is_insert else None
        if isinstance(statement, Insert) and dialect.name != "sqlite" and not statement._returning:
            # The inserted row's id, which SQLite's cursor gives as ``lastrowid``.
            table: Any = statement.table
            statement = statement.returning(*table.primary_key.columns)
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        names = tuple(compiled.positiontup or ())
        given = [name in self.columns for name in names]
        # Each type as the dialect implements it, as SQLAlchemy's execution uses it (the
        # generic DateTime and SQLite's DATETIME store different text).
        types = [
            (self.columns[name].type if is_given else compiled.binds[name].type).dialect_impl(dialect)
            for name, is_given in zip(names, given, strict=True)
        ]
        processors = tuple(type_.bind_processor(dialect) for type_ in types)
        fixed = tuple(
            _GIVEN if is_given else compiled.binds[name].effective_value
            for name, is_given in zip(names, given, strict=True)
        )
        # (One name would make ``itemgetter`` give the value, not a tuple: the loop serves it.)
        every_given = len(names) > 1 and all(given)
        returned = compiled._result_columns
        self._compiled[dialect.name] = done = _Compiled(
            compiled.string,
            names,
            processors,
            fixed,
            pick=itemgetter(*names) if every_given else None,
            converted=tuple((at, p) for at, p in enumerate(processors) if p is not None),
            result_names=tuple(entry.keyname for entry in returned),
            result_processors=tuple(entry.type._cached_result_processor(dialect, None) for entry in returned),
        )
        return done


class DriverConnection:
    """A PostgreSQL connection of asyncpg's, lent to work that ``Database.run`` runs in a
    greenlet (``transaction=False``: each statement commits on its own). Only
    ``DriverStatement`` runs on it; ``dialect`` is the engine's, so statements compile,
    and values convert, as SQLAlchemy's would (the connection has the engine's codecs)."""

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self.driver = driver
        self.dialect = dialect

    def _prepared(self, statement: DriverStatement, params: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        compiled = statement.compiled_for(self.dialect)
        return compiled, DriverStatement._values(compiled, params, {})

    def fetch(self, statement: DriverStatement, params: Mapping[str, Any]) -> list[Any]:
        compiled, values = self._prepared(statement, params)
        rows: list[Any] = await_(self.driver.fetch(compiled.sql, *values))
        return rows

    def execute(self, statement: DriverStatement, params: Mapping[str, Any]) -> tuple[int, int | None]:
        compiled, values = self._prepared(statement, params)
        if compiled.result_names:  # it returns rows (an insert: its id)
            rows = await_(self.driver.fetch(compiled.sql, *values))
            inserted = rows[0][0] if rows and statement.statement.is_insert else None
            return len(rows), inserted
        status: str = await_(self.driver.execute(compiled.sql, *values))
        return _rows_of(status), None


def _rows_of(status: str) -> int:
    """The rows a command changed, from its status tag (``UPDATE 1``, ``INSERT 0 1``)."""
    count = status.rsplit(" ", 1)[-1]
    return int(count) if count.isdigit() else 0
