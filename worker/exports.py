"""The MLflow export task: retried with backoff, recorded on the job, never its outcome."""

from __future__ import annotations

import logging
from typing import Any

from core.config import Settings, get_settings
from core.db import session_scope
from core.exports import mlflow as mlflow_export
from core.exports.schedule import (
    TASK_EXPORT_MLFLOW,
    enqueue_export,
    mlflow_destination,
    schedule_exports,
)
from core.queue import get_celery
from core.services import exports as export_service

logger = logging.getLogger("softlabel.exports")
celery_app = get_celery()


def export_backoff_seconds(attempt: int, *, settings: Settings) -> float:
    """Delay before attempt `attempt + 1`: the base, doubling each time."""
    return float(settings.mlflow_export_backoff_seconds * 2 ** (attempt - 1))


def _export(kind: str, object_id: str, settings: Settings) -> tuple[str, dict[str, str]] | None:
    """Write the run(s); (run id, trial job id → child run id), or None when it is gone."""
    client = mlflow_export.client_for(settings.mlflow_tracking_uri)
    loaded: tuple[dict[str, Any], list[dict[str, Any]]] | None
    with session_scope() as session:
        if kind == "job":
            job = export_service.load_job(session, job_id=object_id)
            loaded = None if job is None else (job, [])
        else:
            loaded = export_service.load_sweep(session, sweep_id=object_id)
    if loaded is None:
        return None
    doc, trials = loaded
    base = doc["spec"] if kind == "job" else (doc["request"] or {}).get("base") or {}
    experiment, run_name = mlflow_destination(base, settings) or (settings.mlflow_experiment, None)
    if kind == "job":
        return mlflow_export.export_job(client, doc, experiment=experiment, run_name=run_name), {}
    return mlflow_export.export_sweep(client, doc, trials, experiment=experiment, run_name=run_name)


def _record(kind: str, object_id: str, status: str, attempt: int, **fields: str | None) -> None:
    with session_scope() as session:
        export_service.set_export_status(
            session,
            kind=kind,
            object_id=object_id,
            target="mlflow",
            status=status,
            attempts=attempt,
            **fields,  # type: ignore[arg-type]
        )


@celery_app.task(name=TASK_EXPORT_MLFLOW, acks_late=True)
def export_mlflow(kind: str, object_id: str, attempt: int) -> str:
    """One attempt to export a finished job or sweep; the next is scheduled on failure."""
    settings = get_settings()
    if attempt == 0:  # sent from outside a worker: decide here, with the workers' settings
        return "scheduled" if schedule_exports(object_id, settings=settings) else "none"
    try:
        written = _export(kind, object_id, settings)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and retried
        error = f"{type(exc).__name__}: {exc}"[:2000]
        last = attempt >= settings.mlflow_export_max_attempts
        status = "failed" if last else "retrying"
        _record(kind, object_id, status, attempt, error=error)
        logger.warning("MLflow export %s (attempt %d): %s", status, attempt, error)
        if not last:
            delay = export_backoff_seconds(attempt, settings=settings)
            enqueue_export(kind, object_id, attempt + 1, countdown=delay)
        return status
    if written is None:
        return "gone"
    run_id, children = written
    _record(kind, object_id, "succeeded", attempt, run_id=run_id)
    for job_id, child in children.items():
        _record("job", job_id, "succeeded", attempt, run_id=child)
    return "succeeded"
