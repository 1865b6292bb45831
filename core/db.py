"""Engine, session factory and the declarative Base with a naming convention."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from anyio.lowlevel import RunVar
from psycopg.rows import DictRow, dict_row
from sqlalchemy import JSON, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.config import get_settings

logger = logging.getLogger("softlabel.db")
T = TypeVar("T")
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONDoc = JSON().with_variant(JSONB(), "postgresql")

# Postgres connections kept open per process, and the burst allowed above them (opened and
# closed again on return: a fork of a Postgres backend each, so the hot API paths cap their
# concurrency below POOL_SIZE instead of relying on the overflow; see api.deps.db_limiter).
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20


class QueryCounter:
    """SQL statements this process sent to the database (softlabel_db_queries_total)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def add(self, n: int = 1) -> None:
        """Count `n` statements."""
        with self._lock:
            self._n += n

    @property
    def value(self) -> int:
        """Statements counted so far."""
        return self._n


QUERIES = QueryCounter()


def _count_statement(*_args: Any) -> None:
    QUERIES.add()
# Async connections per event loop for the hot reads (see AsyncReadPool).
ASYNC_READ_POOL_SIZE = 8


class Base(DeclarativeBase):
    """Declarative base of every ORM model."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def make_engine(url: str) -> Engine:
    """Create an engine (its statements counted in QUERIES); SQLite gets WAL and a busy timeout."""
    engine = _make_engine(url)
    event.listen(engine, "before_cursor_execute", _count_statement)
    return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # pool_pre_ping: a restarted Postgres never leaves a process with a dead connection.
    return create_engine(
        url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW
    )


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    settings = get_settings()
    if settings.embedded:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


def _finish_all(connections: list[psycopg.AsyncConnection[DictRow]]) -> None:
    for conn in connections:
        conn.pgconn.finish()  # synchronous: the event loop may be gone already
    connections.clear()


class AsyncReadPool:
    """Autocommit psycopg AsyncConnections of one event loop, for hot one-statement reads.

    The GET /v1/jobs/{id} path awaits its query on the event loop instead of handing a
    sync SQLAlchemy call to a worker thread: the thread hop (queue, wake-up, GIL hand-over)
    cost more CPU than the rest of the request. The SQL is the SQLAlchemy statement compiled
    for the engine's dialect, on connections made with the engine's own connect arguments
    (so the same type adapters). At most `size` queries run at once; idle connections are
    kept. Like the engine's pool_pre_ping, a reused connection that fails (Postgres was
    restarted) is replaced by a fresh one and the statement retried once.
    """

    def __init__(self, engine: Engine, size: int) -> None:
        self._args, self._kwargs = engine.dialect.create_connect_args(engine.url)
        self._idle: list[psycopg.AsyncConnection[DictRow]] = []
        self._slots = asyncio.Semaphore(size)
        weakref.finalize(self, _finish_all, self._idle)

    async def _connect(self) -> psycopg.AsyncConnection[DictRow]:
        return await psycopg.AsyncConnection.connect(
            *self._args, autocommit=True, row_factory=dict_row, **self._kwargs
        )

    @staticmethod
    async def _fetch(
        conn: psycopg.AsyncConnection[DictRow], query: str, params: Mapping[str, Any]
    ) -> DictRow | None:
        QUERIES.add()
        try:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()
        except BaseException:
            await conn.close()
            raise

    async def fetchone(self, query: str, params: Mapping[str, Any]) -> DictRow | None:
        """The first row of `query` (pyformat parameters) as a dict, or None."""
        async with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            try:
                row = await self._fetch(conn, query, params)
            except psycopg.OperationalError:
                if not reused:
                    raise
                for stale in self._idle:  # the others are likely dead too
                    await stale.close()
                self._idle.clear()
                conn = await self._connect()
                row = await self._fetch(conn, query, params)
            self._idle.append(conn)
            return row


_read_pool: RunVar[AsyncReadPool | None] = RunVar("softlabel_async_read_pool")


def async_read_pool() -> AsyncReadPool | None:
    """The running event loop's AsyncReadPool; None unless the database is Postgres."""
    try:
        return _read_pool.get()
    except LookupError:
        engine = get_engine()
        pool = (
            AsyncReadPool(engine, ASYNC_READ_POOL_SIZE)
            if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
            else None
        )
        _read_pool.set(pool)
        return pool


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """The process-wide session factory (its sessions run their effects after commit)."""
    import core.services.effects  # noqa: F401 - registers the after-commit hook

    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a retry on a fresh connection may cure."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], *, what: str, deadline_s: float = 60.0) -> T:
    """Call `fn` (one whole transaction), retrying transient DB errors with backoff."""
    give_up = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


@contextmanager
def session_scope() -> Iterator[Session]:
    """The task scope: a session whose transaction commits on success, rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
