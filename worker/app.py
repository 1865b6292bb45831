"""The Celery worker app: tasks registered on the shared app, and the beat schedule."""

from __future__ import annotations

from core.config import get_settings
from core.queue import TASK_RECONCILE, get_celery

celery_app = get_celery()
celery_app.conf.beat_schedule = {
    "reconcile": {"task": TASK_RECONCILE, "schedule": get_settings().reconcile_interval_seconds},
}

import worker.tasks  # noqa: E402,F401  (registers the tasks)
