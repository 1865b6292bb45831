"""Thin Celery tasks: they receive ids and call the runner or the reconciler."""

from __future__ import annotations

import logging

from core.config import get_settings
from core.db import session_scope
from core.exports.schedule import schedule_sweep_export
from core.logging import configure_logging, job_id_var
from core.queue import (
    TASK_DELIVER_WEBHOOK,
    TASK_FINALIZE_SWEEP,
    TASK_RECONCILE,
    TASK_RUN_GROUP,
    TASK_RUN_JOB,
    get_celery,
)
from core.services import effects, webhooks
from core.services.reconcile import reconcile_once

logger = logging.getLogger("softlabel.worker")
celery_app = get_celery()
configure_logging(json_logs=get_settings().log_json)


@celery_app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    """Train one job by id (a delivery that cannot claim it does nothing)."""
    from worker.runner import execute_job

    job_id_var.set(job_id)
    outcome = execute_job(job_id, settings=get_settings())
    logger.info("job finished: %s", outcome, extra={"job_id": job_id})
    return str(outcome)


@celery_app.task(name=TASK_RUN_GROUP, acks_late=True, reject_on_worker_lost=True)
def run_group(job_ids: list[str]) -> dict[str, str]:
    """Train a group of stackable sweep trials together (ids only; unclaimable ones skipped)."""
    from worker.group_runner import execute_group

    outcomes = execute_group(list(job_ids), settings=get_settings())
    logger.info("trial group finished: %s", outcomes)
    return {job_id: str(outcome) for job_id, outcome in outcomes.items()}


@celery_app.task(name=TASK_FINALIZE_SWEEP, acks_late=True)
def finalize_sweep(sweep_id: str) -> bool:
    """Write a sweep's report and plots once all its trials have ended (idempotent)."""
    done = effects.finalize_sweep(sweep_id)
    if done:
        schedule_sweep_export(sweep_id)  # after the report has committed
    return done


@celery_app.task(name=TASK_RECONCILE, acks_late=False)
def reconcile() -> dict[str, int]:
    """One reconciler pass (scheduled by beat)."""
    report = reconcile_once(get_settings())
    return {
        "requeued": len(report.requeued),
        "failed": len(report.failed),
        "timed_out": len(report.timed_out),
        "reenqueued": len(report.reenqueue),
        "idempotency_keys_purged": report.purged_keys,
    }


@celery_app.task(name=TASK_DELIVER_WEBHOOK, acks_late=True)
def deliver_webhook(job_id: str, event: str, attempt: int) -> str:
    """One signed webhook attempt; schedules the next one with backoff when it fails."""
    settings = get_settings()
    with session_scope() as session:
        outcome = webhooks.deliver(
            session, job_id=job_id, event=event, attempt=attempt, settings=settings
        )
    if outcome is False:
        delay = webhooks.backoff_seconds(attempt, settings=settings)
        webhooks.enqueue_webhook(job_id, event, attempt + 1, countdown=delay)
        return "retrying"
    return "delivered" if outcome else "gave_up"
