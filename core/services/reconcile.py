"""The reconciler: Postgres is the truth, the broker only speeds things up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.db import session_scope
from core.models import Job, JobEvent
from core.services import idempotency, jobs
from core.services.effects import effects
from core.states import FailureReason, JobStatus
from core.sweep_spec import group_key
from core.timeutil import as_utc, utcnow

logger = logging.getLogger("softlabel.reconcile")


@dataclass
class ReconcileReport:
    """What one reconciler pass did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    reenqueue: list[str] = field(default_factory=list)
    purged_keys: int = 0
    # requeued sweep trials that stack together go back as one group (its group checkpoint)
    groups: dict[tuple[str, str], list[str]] = field(default_factory=dict)


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


def _timeout_message(time_limit_s: float) -> str:
    return (
        f"The job exceeded the hard time limit of {time_limit_s:g} s and was stopped; "
        "use fewer epochs or a smaller model"
    )


def expired_leases(session: Session, *, limit: int) -> list[Job]:
    """Running jobs whose lease expired, oldest expiry first, locked (SKIP LOCKED)."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < utcnow())
            .order_by(Job.lease_expires_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def reclaim_expired_leases(
    session: Session, *, limit: int = 500, time_limit_s: float | None = None
) -> ReconcileReport:
    """Running jobs whose lease expired go back to queued (attempt + 1) or end failed.

    An attempt that ran longer than the hard time limit (`time_limit_s`) was killed for it:
    the job ends failed/timeout instead of running again. At max_attempts: worker_lost.
    Ended jobs are announced, requeued ones enqueued, after the caller commits.
    """
    report = ReconcileReport()
    now = utcnow()
    fx = effects(session)
    for job in expired_leases(session, limit=limit):
        started = attempt_started_at(session, job.id) if time_limit_s else None
        if time_limit_s and started and (now - started).total_seconds() >= time_limit_s:
            message = _timeout_message(time_limit_s)
            if jobs.fail_expired(session, job=job, reason=FailureReason.TIMEOUT, message=message):
                report.timed_out.append(job.id)
                fx.announce_terminal(job.id)
        elif job.attempt >= job.max_attempts:
            message = (
                f"The worker running this job was lost {job.attempt} "
                f"times (max_attempts={job.max_attempts})"
            )
            reason = FailureReason.WORKER_LOST
            if jobs.fail_expired(session, job=job, reason=reason, message=message):
                report.failed.append(job.id)
                fx.announce_terminal(job.id)
        elif jobs.requeue_expired(session, job=job):
            report.requeued.append(job.id)
            key = (job.sweep_id, group_key(job.spec, job.id)) if job.sweep_id else ("", job.id)
            report.groups.setdefault(key, []).append(job.id)
    session.flush()
    return report


def stale_queued_jobs(session: Session, *, grace_seconds: float, limit: int = 500) -> list[str]:
    """Queued jobs never handed to the broker, or handed over longer ago than the grace period."""
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.status == JobStatus.QUEUED,
                or_(Job.enqueued_at.is_(None), Job.enqueued_at < cutoff),
                Job.queued_at < cutoff,
            )
            .order_by(Job.queued_at)
            .limit(limit)
        )
    )


def reconcile_once(settings: Settings) -> ReconcileReport:
    """One pass: reclaim expired leases, (re-)enqueue every job the broker may have lost, and
    delete expired idempotency keys; the effects run after the pass commits.

    Safe to run in several processes at once: expired rows are locked with SKIP LOCKED and
    every transition is conditional; a job enqueued twice is claimed once.
    """
    with session_scope() as session:
        report = reclaim_expired_leases(session, time_limit_s=settings.task_time_limit)
        report.reenqueue = stale_queued_jobs(session, grace_seconds=settings.queued_grace_seconds)
        fx = effects(session)
        for group in report.groups.values():
            fx.enqueue_group(group)
        for job_id in dict.fromkeys(report.reenqueue):
            if job_id not in report.requeued:
                fx.enqueue_job(job_id)
        report.purged_keys = idempotency.purge_expired(session)
    return report


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
