"""Test configuration: a fresh Postgres database and a Redis db per run, real processes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import resolve_services

RUN_ID = os.getpid()
# The configured servers (SOFTLABEL_TEST_PG / SOFTLABEL_TEST_REDIS, default 127.0.0.1:5432 and
# :6379) when they answer; otherwise throwaway ones from the dev extra's wheels (tests/services.py).
PG_SERVER, REDIS_SERVER = resolve_services()
TEST_DB = f"softlabel_test_{RUN_ID}"


def _claim_redis_db() -> int:
    """Pick a Redis db no concurrent test run holds (a lock key in db 0, released at exit)."""
    import atexit

    import redis

    admin = redis.Redis.from_url(f"{REDIS_SERVER}/0")
    for offset in range(15):
        number = 1 + (RUN_ID + offset) % 15
        lock = f"softlabel:test-run-lock:{number}"
        if admin.set(lock, RUN_ID, nx=True, ex=3 * 3600):
            atexit.register(admin.delete, lock)
            return number
    raise RuntimeError("all Redis test databases 1..15 are held by other test runs")


REDIS_DB = _claim_redis_db()
VAR_DIR = Path(tempfile.mkdtemp(prefix=f"softlabel-test-{RUN_ID}-"))

# Set before anything reads Settings (it is cached per process); subprocesses inherit it.
os.environ.update(
    {
        "SOFTLABEL_DATABASE_URL": f"{PG_SERVER}/{TEST_DB}",
        "SOFTLABEL_BROKER_URL": f"{REDIS_SERVER}/{REDIS_DB}",
        "SOFTLABEL_VAR_DIR": str(VAR_DIR),
        "SOFTLABEL_ARTIFACT_DIR": str(VAR_DIR / "artifacts"),
        "SOFTLABEL_HEARTBEAT_SECONDS": "0.5",
        "SOFTLABEL_LEASE_SECONDS": "6",
        "SOFTLABEL_QUEUED_GRACE_SECONDS": "5",
        "SOFTLABEL_RECONCILE_INTERVAL_SECONDS": "1",
        "SOFTLABEL_LOG_JSON": "false",
    }
)
for _name in ("SOFTLABEL_AUTH_DISABLED", "SOFTLABEL_API_KEY", "SOFTLABEL_API_URL"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """Create the run's Postgres database, migrate it to head, drop it at the end."""
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{TEST_DB}"'))
    from softlabel.server import migrate

    migrate("head")
    yield os.environ["SOFTLABEL_DATABASE_URL"]
    from core.db import get_engine

    get_engine().dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The run's Redis database, flushed at the start and the end."""
    import redis

    url = os.environ["SOFTLABEL_BROKER_URL"]
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def truncate_all() -> None:
    """Empty every table (between tests).

    A worker shared by a module's tests may still be finishing a job of the last test, and
    its row locks can deadlock with TRUNCATE's table locks: Postgres then cancels one side,
    and if that is us, we try again.
    """
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from core.db import Base, get_engine

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    for attempt in range(5):
        try:
            with get_engine().begin() as conn:
                conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            return
        except OperationalError as exc:
            if "deadlock detected" not in str(exc) or attempt == 4:
                raise


@pytest.fixture
def db(database: str) -> Iterator[str]:
    """A clean database for one test."""
    truncate_all()
    yield database
    truncate_all()


@pytest.fixture
def session(db: str) -> Iterator[object]:
    """An ORM session on the clean database."""
    from core.db import get_sessionmaker

    s = get_sessionmaker()()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


@pytest.fixture
def api_key(db: str) -> str:
    """A fresh API key of tenant `acme`."""
    from core.db import session_scope
    from core.services.tenants import create_api_key

    with session_scope() as s:
        _, raw = create_api_key(s, tenant_name="acme")
    return raw


@pytest.fixture
def client(db: str, redis_url: str, api_key: str) -> Iterator[object]:
    """The real app (in-process ASGI over httpx) authenticated as tenant `acme`."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as c:
        yield c


@pytest.fixture
def worker(db: str, redis_url: str, tmp_path: Path) -> Iterator[object]:
    """A real Celery worker process for one test, stopped by its pid afterwards."""
    from tests.processes import start_worker, stop_process

    proc = start_worker(tmp_path / "worker.log")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def module_worker(
    database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """One real Celery worker shared by a module's tests (importing torch is slow)."""
    from tests.processes import start_worker, stop_process

    proc = start_worker(tmp_path_factory.mktemp("worker") / "worker.log")
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def module_api(
    database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """One real uvicorn API process shared by a module's tests; tests get a clean `db`."""
    from tests.processes import start_api, stop_process

    proc = start_api(tmp_path_factory.mktemp("api") / "api.log")
    yield proc
    stop_process(proc)
