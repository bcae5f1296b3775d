"""The hottest writes on SQLite, run straight on the driver's cursor.

SQLAlchemy's work around one execution (an execution context, parameter and result
bookkeeping, events) costs more CPU than SQLite's own work for a one-row insert or
update: measured here, an upload's insert and update, each in its transaction, took 167
microseconds of CPU through ``Connection.execute`` and 120 this way (60 of which are
SQLite's). ``DriverStatement`` compiles a Core
statement once per dialect and, on SQLite, executes it on the DBAPI cursor of the same
connection (so inside the same transaction), converting each value with its column
type's own bind processor: the stored values are exactly those SQLAlchemy would store.
Other dialects go through ``Connection.execute`` as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Column, Connection
from sqlalchemy.sql.dml import UpdateBase


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
        statement: UpdateBase,
        columns: Mapping[str, Column[Any]],
    ) -> None:
        """``columns``: the column each bound parameter is stored in (or compared with),
        by parameter name (an insert sets exactly these columns). Values the statement
        binds itself are bound as SQLAlchemy would."""
        self.statement = statement
        self.columns = columns
        self._compiled: _Compiled | None = None

    def execute(self, connection: Connection, params: dict[str, Any]) -> tuple[int, int | None]:
        """Runs the statement; returns the rows it changed and the last inserted row id."""
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

    @contextmanager
    def _driver_cursor(self, connection: Connection, params: Mapping[str, Any]) -> Iterator[Any]:
        """The statement executed with ``params`` on the connection's DBAPI cursor."""
        compiled = self._compiled or self._compile(connection)
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
        compiled = self._compiled or self._compile(connection)
        memo: dict[tuple[int, int], tuple[Any, Any]] = {}
        values = [self._values(compiled, params, memo) for params in rows]
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(compiled.sql, values)
        finally:
            cursor.close()

    def _compile(self, connection: Connection) -> _Compiled:
        dialect = connection.dialect
        column_keys = list(self.columns) if self.statement.is_insert else None
        compiled = self.statement.compile(dialect=dialect, column_keys=column_keys)
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
        self._compiled = _Compiled(
            compiled.string,
            names,
            processors,
            fixed,
            pick=itemgetter(*names) if every_given else None,
            converted=tuple((at, p) for at, p in enumerate(processors) if p is not None),
        )
        return self._compiled
