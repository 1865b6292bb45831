"""Response models of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from core.models import Job
from core.timeutil import iso


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Failure(BaseModel):
    """Why a job failed."""

    reason: str
    message: str | None


class JobLinks(BaseModel):
    """Where to go next."""

    self: str
    result: str
    events: str
    cancel: str


class JobOut(BaseModel):
    """A job's status, progress, attempt and timestamps."""

    id: str = Field(examples=["job_5f0c0e1e9a2b4c7d8e9f00112233aabb"])
    status: str = Field(examples=["running"])
    attempt: int
    max_attempts: int
    sweep_id: str | None = None
    tags: dict[str, str]
    progress: dict[str, Any]
    failure: Failure | None = None
    created_at: str
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    spec: dict[str, Any]
    links: JobLinks

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        """Build from the ORM row."""
        base = f"/v1/jobs/{job.id}"
        failure = (
            Failure(reason=job.failure_reason, message=job.failure_message)
            if job.failure_reason
            else None
        )
        return cls(
            id=job.id,
            status=job.status,
            attempt=job.attempt,
            max_attempts=job.max_attempts,
            sweep_id=job.sweep_id,
            tags=job.tags or {},
            progress=job.progress or {},
            failure=failure,
            created_at=iso(job.created_at) or "",
            queued_at=iso(job.queued_at),
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
            spec=job.spec,
            links=JobLinks(
                self=base, result=f"{base}/result", events=f"{base}/events", cancel=f"{base}/cancel"
            ),
        )


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, bool] = Field(default_factory=dict)
