"""The reconciler: Postgres is the truth, the broker only speeds things up."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import session_scope
from core.ids import utcnow
from core.models import Job
from core.queue import enqueue_job
from core.services.jobs import add_event, mark_enqueued


@dataclass
class ReconcileReport:
    """What one reconciler pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reenqueue: list[str] = field(default_factory=list)


def reclaim_expired_leases(session: Session, *, limit: int = 500) -> ReconcileReport:
    """Running jobs whose lease expired go back to queued (attempt + 1) or fail worker_lost."""
    report = ReconcileReport()
    now = utcnow()
    expired = list(
        session.scalars(
            select(Job)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .order_by(Job.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    for job in expired:
        if job.attempt >= job.max_attempts:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id, Job.status == "running", Job.lease_owner == job.lease_owner
                )
                .values(
                    status="failed",
                    failure_reason="worker_lost",
                    failure_message=(
                        f"The worker running this job was lost {job.attempt} "
                        f"times (max_attempts={job.max_attempts})"
                    ),
                    finished_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                add_event(
                    session,
                    job_id=job.id,
                    kind="status",
                    data={"status": "failed", "reason": "worker_lost"},
                )
                report.failed.append(job.id)
        else:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job.id, Job.status == "running", Job.lease_owner == job.lease_owner
                )
                .values(
                    status="queued",
                    attempt=job.attempt + 1,
                    lease_owner=None,
                    lease_expires_at=None,
                    queued_at=now,
                    enqueued_at=None,
                    updated_at=now,
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                add_event(
                    session,
                    job_id=job.id,
                    kind="status",
                    data={
                        "status": "queued",
                        "attempt": job.attempt + 1,
                        "reason": "lease_expired",
                    },
                )
                report.requeued.append(job.id)
    session.flush()
    return report


def stale_queued_jobs(session: Session, *, grace_seconds: float, limit: int = 500) -> list[str]:
    """Queued jobs never handed to the broker, or handed over longer ago than the grace period."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == "queued",
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff),
                Job.queued_at < cutoff,
            )
            .order_by(Job.queued_at)
            .limit(limit)
        )
    )


def reconcile_once(settings: Settings) -> ReconcileReport:
    """One pass: reclaim expired leases, then (re-)enqueue every job the broker may have lost."""
    with session_scope() as session:
        report = reclaim_expired_leases(session)
        report.reenqueue = stale_queued_jobs(session, grace_seconds=settings.queued_grace_seconds)
    to_send = list(dict.fromkeys(report.requeued + report.reenqueue))
    sent = []
    for job_id in to_send:
        try:
            enqueue_job(job_id)
            sent.append(job_id)
        except Exception:  # noqa: BLE001 - broker down: the next pass tries again
            break
    with session_scope() as session:
        mark_enqueued(session, job_ids=sent)
    return report
