"""Export bookkeeping: each job's and sweep's `exports` status, and the documents to export.

The status lives in the `exports` JSON column (`{"mlflow": {status, run_id, error, attempts}}`);
it never touches a job's own status. The caller owns the transaction; these only flush().
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.ml import figures
from core.models import Job, Sweep
from core.services.sweeps import sweep_plot
from core.states import TERMINAL_STATUSES
from core.storage import PUBLIC_JOB_ARTIFACTS, get_artifact, job_artifact_key

EXPORT_STATUSES = ("pending", "retrying", "succeeded", "failed", "skipped")
JOB_ARTIFACTS = tuple(name for name in PUBLIC_JOB_ARTIFACTS if name != "model.json")


def _row(session: Session, *, kind: str, object_id: str, lock: bool = False) -> Job | Sweep | None:
    if kind == "job":
        return session.get(Job, object_id, with_for_update=lock)
    return session.get(Sweep, object_id, with_for_update=lock)


def claim_export(
    session: Session,
    *,
    kind: str,
    object_id: str,
    target: str,
    status: str = "pending",
    error: str | None = None,
) -> bool:
    """Record a new export of a terminal job/sweep; False when one was already recorded."""
    row = _row(session, kind=kind, object_id=object_id, lock=True)
    if row is None or row.status not in TERMINAL_STATUSES:
        return False
    exports = dict(row.exports or {})
    if target in exports:
        return False
    exports[target] = {"status": status, "run_id": None, "error": error, "attempts": 0}
    row.exports = exports
    session.flush()
    return True


def set_export_status(
    session: Session,
    *,
    kind: str,
    object_id: str,
    target: str,
    status: str,
    attempts: int,
    run_id: str | None = None,
    error: str | None = None,
) -> None:
    """Set one export's status (run id on success, the last error otherwise)."""
    row = _row(session, kind=kind, object_id=object_id, lock=True)
    if row is None:
        return
    exports = dict(row.exports or {})
    exports[target] = {"status": status, "run_id": run_id, "error": error, "attempts": attempts}
    row.exports = exports
    session.flush()


def job_document(session: Session, *, job: Job) -> dict[str, Any]:
    """A job's fields, result and exportable artifacts (bytes) as a plain dict."""
    artifacts = {}
    for name in JOB_ARTIFACTS:
        found = get_artifact(session, key=job_artifact_key(job.id, name))
        if found is not None:
            artifacts[name] = found[1]
    if job.result:  # figures are drawn from the result (older jobs have them stored)
        result = {**job.result, "spec": job.spec}
        for name in figures.figure_names(result):
            if name not in artifacts:
                drawn = figures.render_figure(name, result, key=job.id)
                if drawn is not None:
                    artifacts[name] = drawn
    return {
        "id": job.id,
        "status": job.status,
        "sweep_id": job.sweep_id,
        "spec": job.spec,
        "tags": job.tags,
        "result": job.result,
        "failure_reason": job.failure_reason,
        "artifacts": artifacts,
    }


def load_job(session: Session, *, job_id: str) -> dict[str, Any] | None:
    """The export document of a job, or None when it is gone."""
    job = session.get(Job, job_id)
    return None if job is None else job_document(session, job=job)


def load_sweep(
    session: Session, *, sweep_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The export documents of a sweep (request, report, plots) and of its trials."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return None
    artifacts = {}
    for name in (sweep.report or {}).get("plots") or {}:
        data = sweep_plot(session, sweep=sweep, name=name)  # stored, or drawn from the report
        if data is not None:
            artifacts[name] = data
    trials = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)).all()
    doc = {
        "id": sweep.id,
        "status": sweep.status,
        "request": sweep.request,
        "tags": sweep.tags,
        "report": sweep.report,
        "artifacts": artifacts,
    }
    return doc, [job_document(session, job=t) for t in trials]


def sweep_of(session: Session, *, job_id: str) -> tuple[str | None, bool, dict[str, Any]]:
    """(sweep id, whether that sweep has finished, the job's spec) of a job."""
    job = session.execute(select(Job.sweep_id, Job.spec).where(Job.id == job_id)).one_or_none()
    if job is None:
        return None, False, {}
    if job.sweep_id is None:
        return None, False, job.spec or {}
    status = session.scalar(select(Sweep.status).where(Sweep.id == job.sweep_id))
    return job.sweep_id, status in TERMINAL_STATUSES, job.spec or {}


def sweep_base_spec(session: Session, *, sweep_id: str) -> dict[str, Any]:
    """The base job spec of a sweep's request ({} when the sweep is gone)."""
    request = session.scalar(select(Sweep.request).where(Sweep.id == sweep_id))  # no report
    return dict((request or {}).get("base") or {})
