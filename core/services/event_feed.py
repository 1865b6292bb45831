"""One query for the events of many jobs at once (the API's shared event-stream reader)."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.models import Job, JobEvent


def job_statuses(session: Session, *, job_ids: list[str]) -> dict[str, str]:
    """Status of each existing job among `job_ids`."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids)))
    return {job_id: job_status for job_id, job_status in rows}


def events_for_jobs(
    session: Session, *, after: dict[str, int], limit: int
) -> list[JobEvent]:
    """Events of every job in `after` with an id above that job's mark, oldest first."""
    if not after:
        return []
    clauses = [
        (JobEvent.job_id == job_id) & (JobEvent.id > mark) for job_id, mark in after.items()
    ]
    return list(session.scalars(select(JobEvent).where(or_(*clauses)).order_by(JobEvent.id)
                                .limit(limit)))
