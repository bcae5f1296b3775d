"""The database: one unit-of-work entry point for every caller.

``Database.run(work)`` runs ``work(connection)`` in one transaction, committed when it
returns and rolled back when it raises. On PostgreSQL the connection drives asyncpg
from the event loop (``AsyncConnection.run_sync``). On SQLite a whole transaction runs on
the event loop with the standard library driver, over one connection kept open: its
transactions take tens of microseconds, and handing each to a thread cost more CPU than
the work (the wake-ups, and the GIL passing to and fro).

On PostgreSQL, work whose statements each stand alone (``transaction=False``) runs on a
connection of asyncpg's, kept aside from the engine's pool, with ``DriverStatement``
calling asyncpg itself: SQLAlchemy's checkout, execution and result handling around a
one-row statement cost several times the statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy.exc
import sqlalchemy.ext.asyncio
from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util.concurrency import greenlet_spawn

from uploader.db.driver import DriverConnection
from uploader.kit.errors import DependencyUnavailable
from uploader.kit.logging import get_logger
from uploader.observability import tracing
from uploader.storage.base import StorageFull

T = TypeVar("T")
Work = Callable[[Connection], T]
log = get_logger(__name__)


def sync_sqlite_url(url: str) -> str:
    """The standard-library driver's URL for a SQLite URL (``sqlite+aiosqlite://`` too)."""
    scheme, sep, rest = url.partition("://")
    return f"sqlite+pysqlite{sep}{rest}" if scheme.startswith("sqlite") else url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


# The kept connection checkpoints only past this many pages of log (80 MiB), a backstop:
# the checkpointer thread copies the log back long before.
_BACKSTOP_CHECKPOINT_PAGES = 20_000


class _WalCheckpointer:
    """Copies SQLite's write-ahead log back into the database file from a thread of its
    own, every ``interval`` seconds (``PRAGMA wal_checkpoint(PASSIVE)``: it never waits
    for, nor holds up, the writer).

    Left to itself SQLite checkpoints inside the commit that fills the log past 1,000
    pages: in the event loop's thread, with two ``fsync`` calls, during which no request
    is served. Here the copy and the ``fsync`` calls run with the GIL released, beside
    the loop. Durability is unchanged: with ``synchronous=NORMAL`` a commit was never
    synced before a checkpoint."""

    def __init__(self, path: str, interval: float = 0.2) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        # Opened here, with the database's first use: the process's descriptors are all
        # taken at start-up, not a tick later.
        self._connection = self._connect()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def _connect(self, *, quiet: bool = False) -> sqlite3.Connection | None:
        try:
            return sqlite3.connect(self.path, timeout=10, check_same_thread=False)
        except sqlite3.Error as exc:
            if not quiet:
                log.warning("database.checkpoint_failed", error=str(exc))
            return None

    def _run(self) -> None:
        connection, self._connection = self._connection, None
        failing = ""  # logged once, not every tick, while it lasts
        while not self._stop.wait(self.interval):
            connection = connection or self._connect(quiet=True)
            if connection is None:
                continue
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                failing = ""
            except sqlite3.Error as exc:  # a full disk, a removed file: tried again later
                if str(exc) != failing:
                    failing = str(exc)
                    log.warning("database.checkpoint_failed", error=failing)
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def stop_soon(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# SQLSTATE classes that say the server, not the statement, is the trouble: connection
# exceptions, insufficient resources, operator intervention (terminated backends), and
# "object not in prerequisite state" (a database not accepting connections).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57", "55000")


def _sqlstate(exc: BaseException) -> str:
    for candidate in (getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return ""


def _driver_connection_lost(exc: BaseException) -> bool:
    """Whether asyncpg's own error (work run on a ``DriverConnection``) says the
    connection, or the server behind it, is gone: the connection is of no more use."""
    module = type(exc).__module__
    if not module.startswith("asyncpg"):
        return isinstance(exc, OSError | TimeoutError)
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state.startswith(_UNAVAILABLE_SQLSTATES)
    return True  # asyncpg's interface errors: a closed or broken connection


def translate_error(exc: Exception) -> Exception | None:
    """What a failed unit of work means to a caller: the disk is full, the database is
    away (worth a retry later), or None for an error of the work itself."""
    if type(exc).__module__.startswith("asyncpg") and _driver_connection_lost(exc):
        return DependencyUnavailable("database", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL:
            return StorageFull(f"database: {orig}")
        if isinstance(orig, sqlite3.OperationalError):
            return DependencyUnavailable("database", str(orig))
        return None
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and (
        exc.connection_invalidated or _sqlstate(exc).startswith(_UNAVAILABLE_SQLSTATES)
    ):
        return DependencyUnavailable("database", str(orig or exc).splitlines()[0])
    if isinstance(exc, sqlalchemy.exc.InterfaceError | sqlalchemy.exc.TimeoutError | OSError | TimeoutError):
        return DependencyUnavailable("database", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return None


class Database:
    def __init__(self, url: str, pool_size: int = 20) -> None:
        self.url = url
        self._sqlite: Engine | None = None
        self._async: AsyncEngine | None = None
        self._sqlite_connection: Connection | None = None
        self._sqlite_lock = threading.Lock()  # callers on other threads (tests, tools) wait
        self._checkpointer: _WalCheckpointer | None = None
        if url.startswith("sqlite"):
            # Through the module attributes: tracing's instrumentation wraps them.
            self._sqlite = sqlalchemy.create_engine(
                sync_sqlite_url(url),
                pool_size=1,
                max_overflow=0,
                pool_reset_on_return=None,  # every unit ends in commit or rollback
                connect_args={"check_same_thread": False},
            )
            event.listen(self._sqlite, "connect", _sqlite_pragmas)
        else:
            # No pre-ping (a round trip before every transaction): a connection that died
            # with its server (a restart, terminated backends) fails its unit of work, which
            # run() gives one more try on a fresh connection. ``pool_size`` are kept once
            # opened (20 by default): under many small uploads a connection opened past
            # the kept ones and closed again at once (a new server process each time)
            # cost more than the statements it ran.
            # Half of the kept connections serve work whose statements stand alone, on
            # the driver (``_DriverPool``, borrowed from this pool), half the rest.
            kept_aside = max(1, pool_size // 2)
            self._async = sqlalchemy.ext.asyncio.create_async_engine(
                url,
                pool_size=max(1, pool_size - kept_aside),
                max_overflow=10,
                pool_timeout=10,
                connect_args={"timeout": 5, "command_timeout": 30},
            )
            self._driver_pool = _DriverPool(self._async, kept_aside)
            # The same pool, without BEGIN and COMMIT, for work whose statements stand
            # alone while traced (the driver's statements would make no spans).
            self._autocommit = self._async.execution_options(isolation_level="AUTOCOMMIT")

    def _run_sqlite(self, work: Work[T]) -> T:
        assert self._sqlite is not None
        with self._sqlite_lock:
            # One connection for the process, kept open: checking one out of the pool and
            # wrapping it anew for every transaction cost more than most transactions.
            connection = self._sqlite_connection
            if connection is None or connection.closed or connection.invalidated:
                connection = self._sqlite_connection = self._sqlite.connect()
                self._start_checkpoints(connection)
            with connection.begin():
                return work(connection)

    def _start_checkpoints(self, connection: Connection) -> None:
        """The kept connection leaves checkpoints to a thread (``_WalCheckpointer``)."""
        path = connection.engine.url.database
        if self._checkpointer is not None or not path or path == ":memory:":
            return
        connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={_BACKSTOP_CHECKPOINT_PAGES}")
        connection.commit()
        self._checkpointer = _WalCheckpointer(path)
        # A database dropped without ``dispose`` (tools, tests) ends its thread too.
        weakref.finalize(self, self._checkpointer.stop_soon)

    async def run(self, work: Work[T], *, transaction: bool = True) -> T:
        """Run ``work(connection)`` as one transaction and return its result.

        ``transaction=False``: on PostgreSQL each statement of ``work`` commits on its own,
        which saves the round trips of ``BEGIN`` and ``COMMIT``. Only for work of a single
        statement, or of reads and statements each of which is correct alone (a guarded
        update that a crash after it leaves consistent).

        A database that is away is a ``DependencyUnavailable`` (after one more try on a
        fresh connection, when the connection died under the work: its transaction was
        rolled back, and units of work set values rather than add to them); a full disk
        is ``StorageFull``."""
        for attempt in (1, 2):
            try:
                return await self._run_once(work, transaction)
            except Exception as exc:
                translated = translate_error(exc)
                if translated is None:
                    raise
                died = (
                    isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
                ) or _driver_connection_lost(exc)
                if attempt == 2 or not died:
                    raise translated from exc
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def _run_once(self, work: Work[T], transaction: bool) -> T:
        if self._sqlite is not None:
            return self._run_sqlite(work)
        assert self._async is not None
        if not transaction:
            if tracing.tracer is None:
                return await self._run_on_driver(work)
            async with self._autocommit.connect() as alone:
                return await alone.run_sync(work)
        async with self._async.begin() as connection:
            return await connection.run_sync(work)

    async def _run_on_driver(self, work: Work[T]) -> T:
        """``work`` on a connection of asyncpg's, each statement committing on its own."""
        assert self._async is not None
        borrowed = await self._driver_pool.acquire()
        driver = DriverConnection(borrowed.driver_connection, self._async.dialect)
        try:
            result = await greenlet_spawn(work, driver)
        except BaseException as exc:
            # A lost connection (the server restarted, say: the others kept aside went
            # with it), or one left in the middle of a statement (cancelled, timed out):
            # never again.
            if not isinstance(exc, Exception) or _driver_connection_lost(exc):
                server_lost = isinstance(exc, Exception) and not isinstance(exc, TimeoutError)
                await self._driver_pool.discard(borrowed, also_idle=server_lost)
            else:
                self._driver_pool.release(borrowed)
            raise
        self._driver_pool.release(borrowed)
        return result

    async def dispose(self) -> None:
        if self._sqlite is not None:
            with self._sqlite_lock:
                if self._sqlite_connection is not None:
                    self._sqlite_connection.close()
                    self._sqlite_connection = None
                if self._checkpointer is not None:
                    self._checkpointer.stop()
                    self._checkpointer = None
            self._sqlite.dispose()
        if self._async is not None:
            await self._driver_pool.close()
            await self._async.dispose()


class _DriverPool:
    """PostgreSQL connections borrowed from the engine's pool and kept aside, lent one at
    a time to work run on the driver (``Database._run_on_driver``). They count against the
    engine's limits, and have its codecs and timeouts. Borrowing and lending cost a list
    operation, where the engine's checkout and return cost more than a status read."""

    def __init__(self, engine: AsyncEngine, size: int, wait_seconds: float = 10.0) -> None:
        self._engine = engine
        self._idle: list[PoolProxiedConnection] = []
        self._slots = asyncio.Semaphore(size)
        self._wait_seconds = wait_seconds

    async def acquire(self) -> PoolProxiedConnection:
        if self._slots.locked():  # every one lent: wait, for a while (the engine's pool_timeout)
            try:
                async with asyncio.timeout(self._wait_seconds):
                    await self._slots.acquire()
            except TimeoutError:
                detail = f"no connection free within {self._wait_seconds:g} s"
                raise DependencyUnavailable("database", detail) from None
        else:
            await self._slots.acquire()
        if self._idle:
            return self._idle.pop()
        try:
            return await greenlet_spawn(self._engine.sync_engine.raw_connection)
        except BaseException as exc:
            self._slots.release()
            if not isinstance(exc, Exception):
                raise
            # Unwrapped by the engine here: refused, not accepting connections, timed out.
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DependencyUnavailable("database", detail) from exc

    def release(self, connection: PoolProxiedConnection) -> None:
        self._idle.append(connection)
        self._slots.release()

    async def discard(self, connection: PoolProxiedConnection, *, also_idle: bool) -> None:
        """Close ``connection`` for good. ``also_idle``: the server was lost, so every
        connection opened before now went with it: those kept idle here, and those in the
        engine's pool (marked stale, as SQLAlchemy does itself when its own statement
        finds a connection lost: it opens new ones when next asked)."""
        self._slots.release()
        if not also_idle:
            await _invalidate(connection)
            return
        doomed, self._idle = self._idle, []
        try:  # (invalidates ``connection`` too)
            await greenlet_spawn(self._engine.sync_engine.pool._invalidate, connection)
        except Exception:
            await _invalidate(connection)
        for each in doomed:
            await _invalidate(each)

    async def close(self) -> None:
        while self._idle:
            connection = self._idle.pop()
            try:
                await greenlet_spawn(connection.close)
            except Exception:
                await _invalidate(connection)


async def _invalidate(connection: PoolProxiedConnection) -> None:
    try:
        await greenlet_spawn(connection.invalidate)
    except Exception:  # already broken: what is left of it goes with the process
        driver: DBAPIConnection | None = connection.dbapi_connection
        if driver is not None and hasattr(driver, "terminate"):
            driver.terminate()
