"""After a job or sweep has ended (and committed): decide on its exports and enqueue them."""

from __future__ import annotations

import logging
from typing import Any

from core.config import Settings, get_settings
from core.db import session_scope
from core.services import exports as export_service

logger = logging.getLogger("softlabel.exports")
TASK_EXPORT_MLFLOW = "softlabel.export_mlflow"
NO_SERVER = "SOFTLABEL_MLFLOW_TRACKING_URI is not set on the workers; nothing was exported"


def mlflow_destination(spec: dict[str, Any], settings: Settings) -> tuple[str, str | None] | None:
    """(experiment, run name) when the job goes to MLflow: a server is set or the spec asks."""
    asked = ((spec or {}).get("tracking") or {}).get("mlflow")
    if not settings.mlflow_tracking_uri and not asked:
        return None
    if asked:
        return str(asked["experiment"]), asked.get("run_name")
    return settings.mlflow_experiment, None


def enqueue_export(kind: str, object_id: str, attempt: int, *, countdown: float = 0.0) -> None:
    """Send the MLflow export task (ids only) to the control queue."""
    from core.queue import PUBLISH_RETRY, QUEUE_CONTROL, get_celery

    get_celery().send_task(
        TASK_EXPORT_MLFLOW,
        args=[kind, object_id, attempt],
        queue=QUEUE_CONTROL,
        countdown=countdown or None,
        retry=True,
        retry_policy=PUBLISH_RETRY,
    )


def _claim_and_send(kind: str, object_id: str, spec: dict[str, Any], settings: Settings) -> bool:
    if mlflow_destination(spec, settings) is None:
        return False
    skipped = not settings.mlflow_tracking_uri
    with session_scope() as session:
        claimed = export_service.claim_export(
            session,
            kind=kind,
            object_id=object_id,
            target="mlflow",
            status="skipped" if skipped else "pending",
            error=NO_SERVER if skipped else None,
        )
    if claimed and not skipped:
        enqueue_export(kind, object_id, 1)
    return claimed and not skipped


def schedule_exports(job_id: str, *, settings: Settings | None = None) -> bool:
    """A job has ended: export it (a sweep's trials go with their sweep, once it has ended)."""
    settings = settings or get_settings()
    try:
        with session_scope() as session:
            sweep_id, sweep_done, spec = export_service.sweep_of(session, job_id=job_id)
        if sweep_id is None:
            return _claim_and_send("job", job_id, spec, settings)
        if sweep_done:
            return schedule_sweep_export(sweep_id, settings=settings)
        if mlflow_destination(spec, settings) is not None and settings.mlflow_tracking_uri:
            with session_scope() as session:  # visible as pending until the sweep exports it
                export_service.claim_export(session, kind="job", object_id=job_id, target="mlflow")
        return False
    except Exception as exc:  # noqa: BLE001 - an export never changes the job's outcome
        logger.warning("could not schedule the export: %s", exc, extra={"job_id": job_id})
        return False


def schedule_sweep_export(sweep_id: str, *, settings: Settings | None = None) -> bool:
    """A sweep has ended: export it with its trials as child runs."""
    settings = settings or get_settings()
    try:
        with session_scope() as session:
            base = export_service.sweep_base_spec(session, sweep_id=sweep_id)
        return _claim_and_send("sweep", sweep_id, base, settings)
    except Exception as exc:  # noqa: BLE001 - an export never changes the sweep's outcome
        logger.warning("could not schedule the sweep export: %s", exc)
        return False
