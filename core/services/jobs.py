"""Job queries and state transitions; every transition is one conditional UPDATE."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from core.errors import ConflictError, NotFoundError
from core.ids import new_id, utcnow
from core.models import TERMINAL_STATUSES, Job, JobEvent
from core.services.pagination import newest_first_page

ACTIVE_STATUSES = ("queued", "running")
LeaseState = Literal["ok", "cancel", "lost"]


def add_event(
    session: Session, *, job_id: str, kind: str, data: dict[str, Any] | None = None
) -> None:
    """Append an event to a job's log (status changes, progress)."""
    session.add(JobEvent(job_id=job_id, kind=kind, data=data or {}))
    session.flush()


def create_job(
    session: Session,
    *,
    tenant_id: str,
    spec: dict[str, Any],
    max_attempts: int,
    sweep_id: str | None = None,
    dataset_id: str | None = None,
    cost: dict[str, Any] | None = None,
) -> Job:
    """Store a new queued job (with its cost estimate, core.ml.cost)."""
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        sweep_id=sweep_id,
        dataset_id=dataset_id,
        status="queued",
        spec=spec,
        tags=dict(spec.get("tags") or {}),
        attempt=1,
        max_attempts=max_attempts,
        progress={},
        cost=cost,
        created_at=now,
        queued_at=now,
        updated_at=now,
    )
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, kind="status", data={"status": "queued", "attempt": 1})
    return job


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """The tenant's job, or NotFoundError (also for another tenant's job)."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFoundError(f"Job {job_id} does not exist")
    return job


def get_job_by_id(session: Session, *, job_id: str) -> Job | None:
    """A job by id regardless of tenant (workers only)."""
    return session.get(Job, job_id)


def count_active_jobs(session: Session, *, tenant_id: str) -> int:
    """Number of the tenant's queued or running jobs."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATUSES))
        )
        or 0
    )


@dataclass(frozen=True)
class JobFilter:
    """Filters of the job list."""

    status: str | None = None
    tag: tuple[str, str] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sweep_id: str | None = None


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    filters: JobFilter | None = None,
) -> tuple[list[Job], str | None]:
    """A page of the tenant's jobs, newest first, and the cursor of the next page."""
    f = filters or JobFilter()
    query = select(Job).where(Job.tenant_id == tenant_id)
    if f.status:
        query = query.where(Job.status == f.status)
    if f.sweep_id:
        query = query.where(Job.sweep_id == f.sweep_id)
    if f.created_after:
        query = query.where(Job.created_at > f.created_after)
    if f.created_before:
        query = query.where(Job.created_at < f.created_before)
    if f.tag:
        key, value = f.tag
        query = query.where(Job.tags[key].as_string() == value)
    return newest_first_page(session, query, Job, limit=limit, cursor=cursor)


def mark_enqueued(session: Session, *, job_ids: list[str]) -> None:
    """Record when jobs were handed to the broker (the reconciler reads it)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == "queued")
            .values(enqueued_at=utcnow())
        )


def claim_job(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> bool:
    """queued → running with a lease, in one conditional update; False if not claimable."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    job = session.get(Job, job_id)
    attempt = job.attempt if job else None
    add_event(
        session,
        job_id=job_id,
        kind="status",
        data={"status": "running", "attempt": attempt, "worker": owner},
    )
    return True


def renew_lease(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> LeaseState:
    """Extend the lease; say whether to go on, cancel, or stop because the lease was lost."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return "lost"
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return "cancel" if cancel else "ok"


def _owned_running(job_id: str, owner: str) -> Any:
    return and_(Job.id == job_id, Job.status == "running", Job.lease_owner == owner)


def record_progress(session: Session, *, job_id: str, owner: str, progress: dict[str, Any]) -> bool:
    """Store the latest progress of a running job the caller owns."""
    result = session.execute(
        update(Job)
        .where(_owned_running(job_id, owner))
        .values(progress=progress, updated_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id=job_id, kind="progress", data=progress)
    return True


def _finish(
    session: Session,
    *,
    job_id: str,
    owner: str,
    status: str,
    values: dict[str, Any],
    event: dict[str, Any],
) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_owned_running(job_id, owner))
        .values(
            status=status,
            finished_at=now,
            updated_at=now,
            lease_owner=None,
            lease_expires_at=None,
            **values,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id=job_id, kind="status", data={"status": status, **event})
    return True


def complete_job(session: Session, *, job_id: str, owner: str, result: dict[str, Any]) -> bool:
    """running → succeeded with the result document (one transaction, owner-checked)."""
    return _finish(
        session, job_id=job_id, owner=owner, status="succeeded", values={"result": result}, event={}
    )


def fail_job(session: Session, *, job_id: str, owner: str, reason: str, message: str) -> bool:
    """running → failed with a typed reason and a message saying what to change."""
    return _finish(
        session,
        job_id=job_id,
        owner=owner,
        status="failed",
        values={"failure_reason": reason, "failure_message": message},
        event={"reason": reason, "message": message},
    )


def finish_canceled(session: Session, *, job_id: str, owner: str) -> bool:
    """running → canceled once the worker has stopped."""
    return _finish(
        session,
        job_id=job_id,
        owner=owner,
        status="canceled",
        values={"failure_reason": "canceled", "failure_message": "Canceled on request"},
        event={"reason": "canceled"},
    )


def release_job(session: Session, *, job_id: str, owner: str) -> bool:
    """running → queued without using up an attempt (graceful worker shutdown)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_owned_running(job_id, owner))
        .values(
            status="queued",
            lease_owner=None,
            lease_expires_at=None,
            queued_at=now,
            enqueued_at=None,
            updated_at=now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id=job_id, kind="status", data={"status": "queued", "released": True})
    return True


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Cancel: a queued job at once, a running one by flag (its worker stops it)."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    now = utcnow()
    if job.status in TERMINAL_STATUSES:
        raise ConflictError(f"Job {job_id} is already {job.status} and cannot be canceled")
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="canceled",
            finished_at=now,
            updated_at=now,
            cancel_requested=True,
            failure_reason="canceled",
            failure_message="Canceled on request",
        )
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_event(
            session, job_id=job_id, kind="status", data={"status": "canceled", "reason": "canceled"}
        )
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True, updated_at=now)
        )
        add_event(session, job_id=job_id, kind="cancel_requested", data={})
    session.flush()
    session.refresh(job)
    return job


def events_after(session: Session, *, job_id: str, after_id: int) -> list[JobEvent]:
    """A job's events with id greater than `after_id`, oldest first."""
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
        )
    )
