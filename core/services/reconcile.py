"""The reconciler: Postgres is the truth, the broker only speeds things up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import session_scope
from core.ids import utcnow
from core.models import Job, JobEvent
from core.queue import enqueue_job
from core.services.jobs import add_event, fail_job, mark_enqueued
from core.timeutil import as_utc

logger = logging.getLogger("softlabel.reconcile")


@dataclass
class ReconcileReport:
    """What one reconciler pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    reenqueue: list[str] = field(default_factory=list)


def attempt_started_at(session: Session, job_id: str) -> datetime | None:
    """When the job's current attempt was claimed (its latest 'running' status event)."""
    events = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.kind == "status")
        .order_by(JobEvent.id.desc())
        .limit(20)
    )
    for event in events:
        if (event.data or {}).get("status") == "running":
            return as_utc(event.created_at)
    return None


def _fail_expired(session: Session, job: Job, *, reason: str, message: str) -> bool:
    """running (expired lease, same owner) → failed with `reason`."""
    if job.lease_owner is None:
        return False
    return fail_job(session, job_id=job.id, owner=job.lease_owner, reason=reason, message=message)


def reclaim_expired_leases(
    session: Session, *, limit: int = 500, time_limit_s: float | None = None
) -> ReconcileReport:
    """Running jobs whose lease expired go back to queued (attempt + 1) or end failed.

    An attempt that ran longer than the hard time limit (`time_limit_s`) was killed for it:
    the job ends failed/timeout instead of running again. At max_attempts: worker_lost.
    """
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
        started = attempt_started_at(session, job.id) if time_limit_s else None
        if time_limit_s and started and (now - started).total_seconds() >= time_limit_s:
            message = (
                f"The job exceeded the hard time limit of {time_limit_s:g} s and was stopped; "
                "use fewer epochs or a smaller model"
            )
            if _fail_expired(session, job, reason="timeout", message=message):
                report.timed_out.append(job.id)
        elif job.attempt >= job.max_attempts:
            message = (
                f"The worker running this job was lost {job.attempt} "
                f"times (max_attempts={job.max_attempts})"
            )
            if _fail_expired(session, job, reason="worker_lost", message=message):
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
    """One pass: reclaim expired leases, then (re-)enqueue every job the broker may have lost.

    Safe to run in several processes at once: expired rows are locked with SKIP LOCKED and
    every transition is conditional; a job enqueued twice is claimed once.
    """
    with session_scope() as session:
        report = reclaim_expired_leases(session, time_limit_s=settings.task_time_limit)
        report.reenqueue = stale_queued_jobs(session, grace_seconds=settings.queued_grace_seconds)
    announce_terminal(report.failed + report.timed_out)
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


def announce_terminal(job_ids: list[str]) -> None:
    """After the reconciler ended jobs: their webhooks, and the report of their sweeps."""
    if not job_ids:
        return
    from core.queue import enqueue_finalize_sweep
    from core.services.webhooks import schedule_terminal

    for job_id in job_ids:
        try:
            schedule_terminal(job_id)
        except Exception as exc:  # noqa: BLE001 - a missed webhook must not stop reconciling
            logger.warning("webhook scheduling failed for %s: %s", job_id, exc)
    with session_scope() as session:
        sweep_ids = {
            sweep_id
            for sweep_id in session.scalars(select(Job.sweep_id).where(Job.id.in_(job_ids)))
            if sweep_id
        }
    for sweep_id in sweep_ids:
        try:
            enqueue_finalize_sweep(sweep_id)
        except Exception as exc:  # noqa: BLE001 - GET /v1/sweeps/{id} also triggers it
            logger.warning("sweep finalize enqueue failed for %s: %s", sweep_id, exc)


def reconcile_forever(
    settings: Settings, *, every_s: float, stop: threading.Event | None = None
) -> None:
    """Run reconciler passes every `every_s` seconds until `stop` is set; errors are logged."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            report = reconcile_once(settings)
            if report.requeued or report.failed or report.timed_out or report.reenqueue:
                logger.info(
                    "reconciled: requeued=%s failed=%s timed_out=%s reenqueued=%s",
                    report.requeued,
                    report.failed,
                    report.timed_out,
                    report.reenqueue,
                )
        except Exception as exc:  # noqa: BLE001 - database or broker down: next pass
            logger.warning("reconciler pass failed: %s", exc)
        stop.wait(every_s)
