"""Reads of jobs for the API: the job list, the event log, and the one-query GET path."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Dialect, Select, and_, bindparam, select
from sqlalchemy.orm import Session

from core.db import AsyncReadPool, get_engine
from core.models import ApiKey, Job, JobEvent
from core.services.pagination import newest_first_page
from core.states import JobStatus


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


def events_after(session: Session, *, job_id: str, after_id: int) -> list[JobEvent]:
    """A job's events with id greater than `after_id`, oldest first."""
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
            .order_by(JobEvent.id)
        )
    )


_JOB_OUT_COLUMNS = (
    Job.id,
    Job.status,
    Job.cancel_requested,
    Job.attempt,
    Job.max_attempts,
    Job.sweep_id,
    Job.tags,
    Job.progress,
    Job.failure_reason,
    Job.failure_message,
    Job.created_at,
    Job.queued_at,
    Job.started_at,
    Job.finished_at,
    Job.spec,
    Job.exports,
    Job.cost,
)
# Authentication and the job in one round trip: no row, the key is invalid or revoked (401,
# the same test as tenants.authenticate); a row without a job, no such job for this tenant
# (404, the same as a missing one).
_JOB_BY_KEY = (
    select(ApiKey.tenant_id.label("auth_tenant_id"), *_JOB_OUT_COLUMNS)
    .select_from(ApiKey)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.tenant_id == ApiKey.tenant_id))
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)
_JOB_BY_TENANT = select(*_JOB_OUT_COLUMNS).where(
    Job.id == bindparam("job_id"), Job.tenant_id == bindparam("tenant_id")
)


_JOB_BY_ID = select(Job.tenant_id.label("owner_tenant_id"), *_JOB_OUT_COLUMNS).where(
    Job.id == bindparam("job_id")
)


@lru_cache(maxsize=4)
def _compiled(statement: Select[Any], dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect))


def job_row_by_key(*, job_id: str, key_hash: str) -> Mapping[Any, Any] | None:
    """The key's tenant and the job's JobOut columns in one query (None: no such live key)."""
    with get_engine().connect() as conn:
        params = {"job_id": job_id, "key_hash": key_hash}
        return conn.execute(_JOB_BY_KEY, params).mappings().first()


async def job_row_by_key_async(
    pool: AsyncReadPool, *, job_id: str, key_hash: str
) -> Mapping[Any, Any] | None:
    """job_row_by_key awaited on the event loop (Postgres' AsyncReadPool)."""
    query = _compiled(_JOB_BY_KEY, get_engine().dialect)
    return await pool.fetchone(query, {"job_id": job_id, "key_hash": key_hash})


async def job_row_by_id_async(pool: AsyncReadPool, *, job_id: str) -> Mapping[Any, Any] | None:
    """The job's owner and JobOut columns by id alone (a long poll's fan-out, access checked)."""
    query = _compiled(_JOB_BY_ID, get_engine().dialect)
    return await pool.fetchone(query, {"job_id": job_id})


def job_row(session: Session, *, tenant_id: str, job_id: str) -> Mapping[Any, Any] | None:
    """The tenant's job as a row of its JobOut columns, or None."""
    params = {"job_id": job_id, "tenant_id": tenant_id}
    return session.execute(_JOB_BY_TENANT, params).mappings().first()


def ended_in_attempt(session: Session, *, job_id: str, attempt: int) -> JobStatus | None:
    """Succeeded or canceled, if the job ended so in `attempt` (after an unknown commit)."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    if job.status == JobStatus.SUCCEEDED and (job.result or {}).get("attempt") == attempt:
        return JobStatus.SUCCEEDED
    if job.status == JobStatus.CANCELED and job.attempt == attempt:
        return JobStatus.CANCELED
    return None
