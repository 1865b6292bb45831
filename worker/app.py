"""The Celery worker app: tasks registered on the shared app, and the beat schedule."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Any

from billiard import process as billiard_process
from celery.signals import task_prerun, worker_shutting_down

from core.config import get_settings
from core.queue import TASK_RECONCILE, get_celery
from worker.lease import install_soft_shutdown

logger = logging.getLogger("softlabel.worker")
celery_app = get_celery()
celery_app.conf.beat_schedule = {
    "reconcile": {"task": TASK_RECONCILE, "schedule": get_settings().reconcile_interval_seconds},
}


@task_prerun.connect
def _before_task(**_: Any) -> None:
    """In the pool child: SIGTERM asks the running job to go back to the queue."""
    install_soft_shutdown(float(celery_app.conf.task_time_limit or 0))


@worker_shutting_down.connect
def _on_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    """Warm shutdown of the main process: tell the pool children to release their jobs."""
    if how != "Warm":
        return
    for child in billiard_process.active_children():
        if child.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    logger.warning("warm shutdown (%s): running jobs go back to the queue", sig)


import worker.exports  # noqa: E402,F401  (registers the export task)
import worker.gpu  # noqa: E402,F401  (one GPU per pool child)
import worker.tasks  # noqa: E402,F401  (registers the tasks)
