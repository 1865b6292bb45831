"""Job queries and every change of a job's state, lease and attempt (their only home).

Each transition is one conditional UPDATE (claim one job or a group, renew, record
progress, finish, fail, cancel, release with or without using an attempt); no other module
writes job.status, the lease or the attempt (tests/test_structure.py checks it).
Services only flush: the request or task scope owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from core.errors import ConflictError, NotFoundError, TooManyRequestsError
from core.ids import new_id
from core.models import Job, JobEvent
from core.states import ACTIVE_STATUSES, TERMINAL_STATUSES, FailureReason, JobStatus, LeaseState
from core.timeutil import as_utc, utcnow

CANCELED_MESSAGE = "Canceled on request"


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs from a job row, read once after the claim."""

    id: str
    tenant_id: str
    spec: dict[str, Any]
    attempt: int
    dataset_id: str | None
    sweep_id: str | None
    queued_s: float


def _claimed(job: Job) -> ClaimedJob:
    """The ClaimedJob of a freshly claimed row; queued_s is queued_at → started_at."""
    queued_at, started = as_utc(job.queued_at), as_utc(job.started_at)
    queued_s = (started - queued_at).total_seconds() if queued_at and started else 0.0
    copied = ("id", "tenant_id", "spec", "attempt", "dataset_id", "sweep_id")
    return ClaimedJob(**{name: getattr(job, name) for name in copied}, queued_s=max(queued_s, 0.0))


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
    max_active_jobs: int | None = None,
    cost: dict[str, Any] | None = None,
) -> Job:
    """Store a new queued job (refused with 429 above `max_active_jobs` active ones)."""
    if max_active_jobs is not None:
        ensure_capacity(session, tenant_id=tenant_id, adding=1, limit=max_active_jobs)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        sweep_id=sweep_id,
        dataset_id=dataset_id,
        status=JobStatus.QUEUED,
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
    add_event(
        session, job_id=job.id, kind="status", data={"status": JobStatus.QUEUED, "attempt": 1}
    )
    return job


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """The tenant's job, or NotFoundError (also for another tenant's job)."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFoundError(f"Job {job_id} does not exist")
    return job


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


def ensure_capacity(session: Session, *, tenant_id: str, adding: int, limit: int) -> None:
    """TooManyRequestsError when `adding` jobs would take the tenant above `limit` active ones."""
    active = count_active_jobs(session, tenant_id=tenant_id)
    if active + adding <= limit:
        return
    added = f" and the sweep adds {adding}" if adding > 1 else ""
    raise TooManyRequestsError(
        f"{active} jobs are queued or running{added} (limit {limit}); wait for some to finish",
        retry_after=30,
    )


def mark_enqueued(session: Session, *, job_ids: list[str]) -> None:
    """Record when jobs were handed to the broker (the reconciler reads it)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
            .values(enqueued_at=utcnow())
        )


def _claim_values(owner: str, lease_seconds: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": JobStatus.RUNNING,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "started_at": func.coalesce(Job.started_at, now),
        "updated_at": now,
    }


def claim_group(
    session: Session, *, job_ids: list[str], owner: str, lease_seconds: float
) -> list[ClaimedJob]:
    """queued → running with a lease for every claimable job of `job_ids`, in one UPDATE.

    The claimed jobs come back in the order of `job_ids` (an empty list: none claimable).
    """
    if not job_ids:
        return []
    rows = session.scalars(
        update(Job)
        .where(
            Job.id.in_(job_ids),
            Job.status == JobStatus.QUEUED,
            Job.cancel_requested.is_(False),
        )
        .values(**_claim_values(owner, lease_seconds))
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    by_id = {job.id: job for job in rows}
    claimed = [_claimed(by_id[job_id]) for job_id in job_ids if job_id in by_id]
    session.add_all(
        JobEvent(
            job_id=job.id,
            kind="status",
            data={"status": JobStatus.RUNNING, "attempt": job.attempt, "worker": owner},
        )
        for job in claimed
    )
    session.flush()  # one INSERT for the group's events
    return claimed


def claim_job(
    session: Session, *, job_id: str, owner: str, lease_seconds: float
) -> ClaimedJob | None:
    """queued → running with a lease, in one conditional update; None if not claimable."""
    claimed = claim_group(session, job_ids=[job_id], owner=owner, lease_seconds=lease_seconds)
    return claimed[0] if claimed else None


def renew_lease(
    session: Session, *, job_id: str, owner: str, lease_seconds: float,
    now: datetime | None = None,
) -> LeaseState:
    """Extend the lease; say whether to go on, cancel, or stop because the lease was lost.

    A group passes one `now` for all its trials: their leases expire at the same instant, so
    a reconciler pass requeues all of them or none (the group comes back whole).
    """
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(_owned_running(job_id, owner))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return LeaseState.LOST
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return LeaseState.CANCEL if cancel else LeaseState.OK


def _owned_running(job_id: str, owner: str) -> Any:
    return and_(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)


def is_owned(session: Session, *, job_id: str, owner: str, lock: bool = False) -> bool:
    """Whether the job is running under `owner`'s lease (`lock`: and lock its row until commit)."""
    query = select(Job.id).where(_owned_running(job_id, owner))
    return session.scalar(query.with_for_update() if lock else query) is not None


def record_progress(
    session: Session, *, job_id: str, owner: str, progress: list[dict[str, Any]]
) -> bool:
    """Store the newest of `progress` on a running job the caller owns; an event per entry."""
    if not progress:
        return True
    result = session.execute(
        update(Job)
        .where(_owned_running(job_id, owner))
        .values(progress=progress[-1], updated_at=utcnow())
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add_all([JobEvent(job_id=job_id, kind="progress", data=p) for p in progress])
    session.flush()
    return True


def _finish(
    session: Session,
    *,
    job_id: str,
    owner: str,
    status: JobStatus,
    values: dict[str, Any],
    event: dict[str, Any],
    unless_canceled: bool = False,
) -> bool:
    now = utcnow()
    owned = _owned_running(job_id, owner)
    if unless_canceled:
        owned = and_(owned, Job.cancel_requested.is_(False))
    result = session.execute(
        update(Job)
        .where(owned)
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


def complete_job(
    session: Session, *, job_id: str, owner: str, result: dict[str, Any]
) -> JobStatus | None:
    """running → succeeded with the result document (owner-checked); None if not ours.

    A cancel requested while the job trained (its last epoch included) wins: the job ends
    canceled instead, without the result, and CANCELED says so. This is the worker's one
    look at the job after training, so no lease renewal is needed before it.
    """
    if _finish(session, job_id=job_id, owner=owner, status=JobStatus.SUCCEEDED,
               values={"result": result}, event={}, unless_canceled=True):
        return JobStatus.SUCCEEDED
    if finish_canceled(session, job_id=job_id, owner=owner):
        return JobStatus.CANCELED
    return None


def fail_job(
    session: Session, *, job_id: str, owner: str, reason: FailureReason, message: str
) -> bool:
    """running → failed with a typed reason and a message saying what to change."""
    return _finish(session, job_id=job_id, owner=owner, status=JobStatus.FAILED,
                   values={"failure_reason": reason, "failure_message": message},
                   event={"reason": reason, "message": message})


def finish_canceled(session: Session, *, job_id: str, owner: str) -> bool:
    """running → canceled once the worker has stopped."""
    return _finish(session, job_id=job_id, owner=owner, status=JobStatus.CANCELED,
                   values={"failure_reason": FailureReason.CANCELED,
                           "failure_message": CANCELED_MESSAGE},
                   event={"reason": FailureReason.CANCELED})


def _back_to_queue(session: Session, *, job_id: str, owner: str, attempt: int | None) -> bool:
    """running → queued, the lease dropped; `attempt` set when a new attempt starts."""
    now = utcnow()
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "lease_owner": None,
        "lease_expires_at": None,
        "queued_at": now,
        "enqueued_at": None,
        "updated_at": now,
    }
    if attempt is not None:
        values["attempt"] = attempt
    result = session.execute(update(Job).where(_owned_running(job_id, owner)).values(**values))
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def release_job(session: Session, *, job_id: str, owner: str) -> bool:
    """running → queued without using up an attempt (graceful worker shutdown)."""
    if not _back_to_queue(session, job_id=job_id, owner=owner, attempt=None):
        return False
    add_event(
        session,
        job_id=job_id,
        kind="status",
        data={"status": JobStatus.QUEUED, "released": True},
    )
    return True


def requeue_expired(session: Session, *, job: Job) -> bool:
    """running with an expired lease → queued for the next attempt (the reconciler)."""
    owner, attempt = job.lease_owner, job.attempt + 1
    if owner is None or not _back_to_queue(session, job_id=job.id, owner=owner, attempt=attempt):
        return False
    add_event(
        session,
        job_id=job.id,
        kind="status",
        data={"status": JobStatus.QUEUED, "attempt": attempt, "reason": "lease_expired"},
    )
    return True


def fail_expired(session: Session, *, job: Job, reason: FailureReason, message: str) -> bool:
    """running with an expired lease (same owner) → failed with `reason` (the reconciler)."""
    if job.lease_owner is None:
        return False
    return fail_job(session, job_id=job.id, owner=job.lease_owner, reason=reason, message=message)


def cancel_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Cancel: a queued job at once, a running one by flag (its worker stops it)."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    now = utcnow()
    if job.status in TERMINAL_STATUSES:
        raise ConflictError(f"Job {job_id} is already {job.status} and cannot be canceled")
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELED,
            finished_at=now,
            updated_at=now,
            cancel_requested=True,
            failure_reason=FailureReason.CANCELED,
            failure_message=CANCELED_MESSAGE,
        )
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        add_event(
            session,
            job_id=job_id,
            kind="status",
            data={"status": JobStatus.CANCELED, "reason": FailureReason.CANCELED},
        )
    else:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True, updated_at=now)
        )
        add_event(session, job_id=job_id, kind="cancel_requested", data={})
    session.flush()
    session.refresh(job)
    return job
