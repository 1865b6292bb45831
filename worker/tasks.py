"""Thin Celery tasks: they receive ids and call the runner or the reconciler."""

from __future__ import annotations

import logging

from core.config import get_settings
from core.queue import TASK_RECONCILE, TASK_RUN_JOB, get_celery
from core.services.reconcile import reconcile_once

logger = logging.getLogger("softlabel.worker")
celery_app = get_celery()


@celery_app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    """Train one job by id (a delivery that cannot claim it does nothing)."""
    from worker.runner import execute_job

    outcome = execute_job(job_id, settings=get_settings())
    logger.info("job finished: %s", outcome, extra={"job_id": job_id})
    return outcome


@celery_app.task(name=TASK_RECONCILE, acks_late=False)
def reconcile() -> dict[str, int]:
    """One reconciler pass (scheduled by beat)."""
    report = reconcile_once(get_settings())
    return {
        "requeued": len(report.requeued),
        "failed": len(report.failed),
        "reenqueued": len(report.reenqueue),
    }
