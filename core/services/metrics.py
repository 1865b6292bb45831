"""The queries behind /metrics: jobs by status and the duration histogram of finished jobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, case, cast, func, select
from sqlalchemy.orm import Session

from core.models import Job
from core.states import TERMINAL_STATUSES, JobStatus


@dataclass(frozen=True)
class DurationRow:
    """Finished jobs of one status: how many, their total seconds, cumulative bucket counts."""

    status: str
    count: int
    total_s: float
    buckets: list[int]


def _duration_expr(session: Session) -> Any:
    """Seconds from started_at to finished_at, per dialect."""
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0
    return cast(func.extract("epoch", Job.finished_at - Job.started_at), Float)


def job_counts(session: Session) -> dict[str, int]:
    """The number of jobs in every status (zero for a status no job is in)."""
    counts = {str(status): 0 for status in JobStatus}
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[str(status)] = int(n)
    return counts


def duration_histogram(session: Session, *, buckets: tuple[float, ...]) -> list[DurationRow]:
    """Start-to-end seconds of finished jobs per terminal status, counted into `buckets`."""
    duration = _duration_expr(session)
    columns = [func.count(), func.coalesce(func.sum(duration), 0.0)]
    columns += [func.sum(case((duration <= b, 1), else_=0)) for b in buckets]
    query = (
        select(Job.status, *columns)
        .where(
            Job.status.in_(TERMINAL_STATUSES),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .group_by(Job.status)
    )
    return [
        DurationRow(str(status), int(total), float(total_s or 0.0), [int(c or 0) for c in counts])
        for status, total, total_s, *counts in session.execute(query)
    ]
