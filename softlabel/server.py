"""Server-side commands: migrate, api, worker, beat, reconcile, keys."""

from __future__ import annotations

from pathlib import Path

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


def run_api(host: str, port: int, *, workers: int = 1) -> None:
    """Serve the HTTP API with uvicorn (`workers` processes on one socket).

    uvicorn's own access log is off: the app logs one JSON line per request itself
    (api.middleware.RequestContextMiddleware). uvicorn[standard] brings uvloop and httptools,
    which "auto" picks.
    """
    import uvicorn

    from api.safety import check_startup
    from core.config import get_settings

    settings = get_settings()
    check_startup(settings)  # refuse before binding anything
    if settings.metrics_bind:
        from api.metrics_bind import start_metrics_listener

        start_metrics_listener(settings.metrics_bind)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


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
