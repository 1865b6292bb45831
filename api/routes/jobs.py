"""Jobs: submit, list, inspect, fetch the result."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import Dialect, Select, and_, bindparam, select

from api.deps import (
    BearerCredentials,
    CursorQuery,
    LimitQuery,
    SessionDep,
    SettingsDep,
    TenantDep,
    bearer_token,
    db_limiter,
    request_settings,
    resolve_tenant,
)
from api.schemas import (
    JobOut,
    JobPage,
    Problem,
    WebhookDeliveryList,
    WebhookDeliveryOut,
    job_out_json,
)
from core import storage
from core.config import Settings
from core.db import async_read_pool, get_engine, get_sessionmaker, session_scope
from core.errors import (
    ConflictError,
    NotFoundError,
    TooManyRequestsError,
    UnauthorizedError,
    ValidationAppError,
)
from core.models import TERMINAL_STATUSES, ApiKey, Job
from core.queue import enqueue_job
from core.services import jobs as job_service
from core.services import webhooks
from core.services.cost import check_job_cost
from core.services.specs import check_job_spec
from core.services.tenants import hash_key
from core.spec import EXAMPLE_SPEC, JobSpec
from core.timeutil import iso

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
logger = logging.getLogger("softlabel.api")

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or invalid API key"},
    422: {"model": Problem, "description": "Invalid request"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "No such job"}}


def enqueue_committed(session: SessionDep, job_ids: list[str]) -> None:
    """Hand committed jobs to the broker; if it is down, the reconciler does it later."""
    sent = []
    for job_id in job_ids:
        try:
            enqueue_job(job_id)
            sent.append(job_id)
        except Exception as exc:  # noqa: BLE001 - the job is stored; the reconciler retries
            logger.warning(
                "enqueue failed, reconciler will retry", extra={"job_id": job_id, "error": str(exc)}
            )
    job_service.mark_enqueued(session, job_ids=sent)
    session.commit()


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={**PROBLEMS, 429: {"model": Problem, "description": "Too many active jobs"}},
)
def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples={"digits": {"value": EXAMPLE_SPEC}})],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
) -> JobOut:
    """Validate the spec, store the job as queued, enqueue it after commit."""
    webhooks.validate_spec_url(spec.webhook_url, settings=settings)
    resolved, dataset_id = check_job_spec(session, tenant_id=tenant.id, spec=spec)
    cost = check_job_cost(session, tenant_id=tenant.id, spec=spec, settings=settings)
    active = job_service.count_active_jobs(session, tenant_id=tenant.id)
    if active >= settings.max_active_jobs_per_tenant:
        raise TooManyRequestsError(
            f"{active} jobs are queued or running (limit {settings.max_active_jobs_per_tenant}); "
            "wait for some to finish",
            retry_after=30,
        )
    job = job_service.create_job(
        session,
        tenant_id=tenant.id,
        spec=resolved,
        max_attempts=settings.max_attempts,
        dataset_id=dataset_id,
        cost=cost.as_dict(),
    )
    session.commit()
    enqueue_committed(session, [job.id])
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.from_job(job)


@router.get("", response_model=JobPage, responses=PROBLEMS)
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    status_: Annotated[
        str | None, Query(alias="status", pattern="^(queued|running|succeeded|failed|canceled)$")
    ] = None,
    tag: Annotated[str | None, Query(max_length=400, description="key:value")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
) -> JobPage:
    """The tenant's jobs, newest first, cursor-paginated."""
    tag_pair = None
    if tag is not None:
        key, sep, value = tag.partition(":")
        if not sep or not key:
            raise ValidationAppError("tag must look like key:value, e.g. team:vision")
        tag_pair = (key, value)
    filters = job_service.JobFilter(
        status=status_,
        tag=tag_pair,
        created_after=created_after,
        created_before=created_before,
        sweep_id=sweep_id,
    )
    rows, next_cursor = job_service.list_jobs(
        session, tenant_id=tenant.id, limit=limit, cursor=cursor, filters=filters
    )
    return JobPage(items=[JobOut.from_job(j) for j in rows], next_cursor=next_cursor)


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


def _load_job(request: Request, settings: Settings, job_id: str) -> Mapping[Any, Any] | None:
    """The caller's job as a row of its JobOut columns (None: no such job for the tenant)."""
    token = bearer_token(request)
    if token is not None:
        with get_engine().connect() as conn:
            row = (
                conn.execute(_JOB_BY_KEY, {"job_id": job_id, "key_hash": hash_key(token)})
                .mappings()
                .first()
            )
        if row is None:
            raise UnauthorizedError("The API key is invalid or revoked")
        request.state.tenant_id = row["auth_tenant_id"]
        return row if row["id"] is not None else None
    session = get_sessionmaker()()  # no key: 401, or the local tenant when auth is disabled
    try:
        tenant = resolve_tenant(request, session, settings)
        params = {"job_id": job_id, "tenant_id": tenant.id}
        return session.execute(_JOB_BY_TENANT, params).mappings().first()
    finally:
        session.rollback()
        session.close()


@lru_cache(maxsize=4)
def _compiled(statement: Select[Any], dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect))


@router.get("/{job_id}", response_model=JobOut, responses={**PROBLEMS, **NOT_FOUND})
async def get_job(job_id: str, request: Request, _credentials: BearerCredentials) -> Response:
    """Status, progress, attempt, timestamps and failure reason of one job."""
    # The hot path (P5): one query for the key and the job, awaited on the event loop on
    # Postgres (a worker thread otherwise), the body written straight from the row (the
    # same bytes as the JobOut response model).
    token = bearer_token(request)
    pool = async_read_pool() if token is not None else None
    row: Mapping[Any, Any] | None
    if token is not None and pool is not None:
        query = _compiled(_JOB_BY_KEY, get_engine().dialect)
        row = await pool.fetchone(query, {"job_id": job_id, "key_hash": hash_key(token)})
        if row is None:
            raise UnauthorizedError("The API key is invalid or revoked")
        request.state.tenant_id = row["auth_tenant_id"]
        if row["id"] is None:
            row = None
    else:
        settings = request_settings(request)
        row = await to_thread.run_sync(_load_job, request, settings, job_id, limiter=db_limiter())
    if row is None:
        raise NotFoundError(f"Job {job_id} does not exist")
    return Response(content=job_out_json(row), media_type="application/json")


@router.get(
    "/{job_id}/result",
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "Not succeeded (yet)"},
    },
)
def get_result(job_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    """The result document of a succeeded job."""
    job = job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    if job.status != "succeeded" or job.result is None:
        detail = f"Job {job_id} is {job.status}; the result exists once it has succeeded"
        if job.failure_reason:
            detail += f" (failure: {job.failure_reason}: {job.failure_message})"
        raise ConflictError(detail, extra={"job_status": job.status})
    return job.result


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        200: {
            "content": {"image/png": {}, "application/octet-stream": {}, "application/json": {}},
            "description": "The artifact's bytes",
        },
    },
    response_class=Response,
)
def get_artifact(job_id: str, name: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Download one of a job's artifacts (model.safetensors, reliability.png, ...)."""
    job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    found = None
    if name in storage.PUBLIC_JOB_ARTIFACTS:
        found = storage.get_artifact(session, key=storage.job_artifact_key(job_id, name))
    if found is None:
        raise NotFoundError(
            f"Job {job_id} has no artifact {name!r}; available once the job has "
            f"succeeded: {', '.join(storage.PUBLIC_JOB_ARTIFACTS)}"
        )
    row, data = found
    return Response(
        content=data,
        media_type=row.content_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "The job has already finished"},
    },
)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    """Cancel: a queued job is canceled at once; a running job stops within seconds.

    A running job's worker sees the request at its next heartbeat or batch, stops, keeps
    its last checkpoint and ends `canceled`; until then the job shows
    `cancel_requested: true`. Cancelling a finished job is 409.
    """
    job = job_service.cancel_job(session, tenant_id=tenant.id, job_id=job_id)
    session.commit()
    if job.status == "canceled":
        webhooks.schedule_terminal(job.id)
    return JobOut.from_job(job)


SSE_POLL_SECONDS = 0.25
SSE_KEEPALIVE_SECONDS = 15.0
SSE_EXAMPLE = (
    'id: 1\nevent: status\ndata: {"job_id": "job_...", "status": "queued", "attempt": 1}\n\n'
    'id: 2\nevent: status\ndata: {"job_id": "job_...", "status": "running", "attempt": 1}\n\n'
    'id: 3\nevent: progress\ndata: {"job_id": "job_...", "epoch": 1, "epochs": 3, '
    '"latest": {"epoch": 1, "val_nll": 0.41}}\n\n'
    'id: 6\nevent: status\ndata: {"job_id": "job_...", "status": "succeeded"}\n\n'
)


def _read_events(job_id: str, after_id: int) -> tuple[str | None, list[tuple[int, str, str]]]:
    """The job's status and its events after `after_id` (read in one transaction)."""
    with session_scope() as session:
        job = job_service.get_job_by_id(session, job_id=job_id)
        if job is None:
            return None, []
        rows = job_service.events_after(session, job_id=job_id, after_id=after_id)
        out = []
        for row in rows:
            data = {"job_id": job_id, **(row.data or {}), "at": iso(row.created_at)}
            out.append((row.id, row.kind, json.dumps(data, separators=(",", ":"), default=str)))
        return job.status, out


async def _event_stream(job_id: str, after_id: int) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    while True:
        job_status, events = await to_thread.run_sync(_read_events, job_id, after_id)
        for event_id, kind, data in events:
            after_id = event_id
            yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
            last_sent = time.monotonic()
        if job_status is None or job_status in TERMINAL_STATUSES:
            return
        if time.monotonic() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(SSE_POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        200: {
            "description": "Server-Sent Events: `status` (each transition), `progress` (each "
            "epoch) and `cancel_requested`; the stream ends after the terminal status event. "
            "Each event's `id` can be sent back as `Last-Event-ID` to resume.",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "example": SSE_EXAMPLE}
            },
        },
    },
)
def job_events(
    job_id: str,
    session: SessionDep,
    tenant: TenantDep,
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Resume after this event")
    ] = None,
) -> StreamingResponse:
    """Status changes and per-epoch progress as Server-Sent Events, until the job ends."""
    job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    return StreamingResponse(
        _event_stream(job_id, last_event_id or 0),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{job_id}/webhooks",
    response_model=WebhookDeliveryList,
    responses={**PROBLEMS, **NOT_FOUND},
)
def list_webhook_deliveries(
    job_id: str, session: SessionDep, tenant: TenantDep
) -> WebhookDeliveryList:
    """Every webhook delivery attempt for the job (URL, attempt, HTTP status, error)."""
    job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    rows = webhooks.list_deliveries(session, job_id=job_id)
    return WebhookDeliveryList(
        items=[
            WebhookDeliveryOut(
                id=r.id,
                event=r.event,
                url=r.url,
                attempt=r.attempt,
                status_code=r.status_code,
                error=r.error,
                created_at=iso(r.created_at) or "",
            )
            for r in rows
        ]
    )
