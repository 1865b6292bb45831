"""Server-side commands: migrate, api, worker, beat, reconcile, keys."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
from pathlib import Path
from typing import Any

from core.config import get_settings

ROOT = Path(__file__).resolve().parents[1]


def migrate(revision: str = "head") -> None:
    """Upgrade the configured database to `revision` with Alembic."""
    from alembic import command
    from alembic.config import Config

    settings = get_settings()
    if settings.embedded:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", settings.resolved_database_url)
    command.upgrade(config, revision)


_API_OPTIONS: dict[str, Any] = {
    "factory": True,
    "log_level": "warning",
    # The app logs one JSON line per request itself (api.middleware.RequestContextMiddleware).
    "access_log": False,
}


def run_api(host: str, port: int, *, workers: int = 1) -> None:
    """Serve the HTTP API with uvicorn (uvloop and httptools, from uvicorn[standard]).

    With several workers each process listens on its own SO_REUSEPORT socket, so the kernel
    spreads connections evenly over them: with one shared socket (uvicorn's --workers) the
    first process to wake up accepts a whole burst of keep-alive connections (14 against 36
    of 50 in bench/api.py) and its clients wait twice as long.
    """
    import socket

    import uvicorn

    if workers <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        uvicorn.run("api.main:create_app", host=host, port=port, workers=workers, **_API_OPTIONS)
        return
    _supervise([_start_worker(host, port, n) for n in range(workers)])


def _serve_reuseport(host: str, port: int) -> None:
    """One API worker process on its own SO_REUSEPORT listening socket."""
    import socket

    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    config = uvicorn.Config("api.main:create_app", host=host, port=port, **_API_OPTIONS)
    sock.listen(config.backlog)
    uvicorn.Server(config).run(sockets=[sock])


def _start_worker(host: str, port: int, n: int) -> multiprocessing.process.BaseProcess:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_serve_reuseport, args=(host, port), name=f"softlabel-api-{n}")
    proc.start()
    return proc


def _supervise(procs: list[multiprocessing.process.BaseProcess]) -> None:
    """Wait for the workers; SIGTERM/SIGINT stops them all, one dying stops the rest."""
    import signal
    from multiprocessing.connection import wait

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn shuts down gracefully

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    wait([proc.sentinel for proc in procs])
    died = not stopping
    stop()
    for proc in procs:
        proc.join(timeout=30)
    if died or any(proc.exitcode not in (0, -signal.SIGTERM) for proc in procs):
        raise SystemExit(1)


def run_worker(queues: str, concurrency: int, loglevel: str, hostname: str = "") -> None:
    """Run a Celery worker (prefork: time limits and lost-worker detection need it)."""
    import core.ml.experiment  # noqa: F401 - torch loaded once, before the pool forks
    from worker.app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            f"--queues={queues}",
            f"--concurrency={concurrency}",
            "--pool=prefork",
            "--without-gossip",
            "--without-mingle",
            *([f"--hostname={hostname}"] if hostname else []),
        ]
    )


def run_beat(loglevel: str) -> None:
    """Run Celery beat (schedules the reconciler)."""
    from worker.app import celery_app

    settings = get_settings()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    celery_app.start(
        ["beat", f"--loglevel={loglevel}", f"--schedule={settings.var_dir / 'celerybeat-schedule'}"]
    )


def reconcile() -> dict[str, list[str]]:
    """Run one reconciler pass now."""
    from core.services.reconcile import reconcile_once

    report = reconcile_once(get_settings())
    return {
        "requeued": report.requeued,
        "failed": report.failed,
        "timed_out": report.timed_out,
        "reenqueued": report.reenqueue,
    }


def reconcile_loop(every_s: float) -> None:
    """Run the reconciler every `every_s` seconds until SIGTERM/SIGINT (beat not needed)."""
    import logging
    import signal
    import threading

    from core.services.reconcile import reconcile_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    reconcile_forever(get_settings(), every_s=every_s, stop=stop)
