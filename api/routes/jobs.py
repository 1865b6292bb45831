"""Jobs: submit, list, inspect, fetch the result."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api.deps import (
    BearerCredentials,
    CursorQuery,
    LimitQuery,
    SessionDep,
    SettingsDep,
    TenantDep,
    in_db_thread,
    request_settings,
    resolve_tenant,
)
from api.event_stream import open_event_stream
from api.job_poll import get_job_response
from api.problems import PROBLEMS, not_found
from api.schemas import JobOut, JobPage, Problem, WebhookDeliveryList, WebhookDeliveryOut
from core import storage
from core.config import Settings
from core.db import session_scope
from core.errors import ConflictError, NotFoundError, ValidationAppError
from core.ml import figures
from core.services import cost, job_reads, webhooks
from core.services import jobs as job_service
from core.services.effects import effects
from core.services.specs import check_job_spec
from core.spec import EXAMPLE_SPEC, JobSpec
from core.states import JobStatus
from core.timeutil import iso
from core.validation import IsoDateTime

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
logger = logging.getLogger("softlabel.api")

NOT_FOUND = not_found("job")


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
    estimate = cost.check_job_cost(session, tenant_id=tenant.id, spec=spec, settings=settings)
    job = job_service.create_job(
        session,
        tenant_id=tenant.id,
        spec=resolved,
        max_attempts=settings.max_attempts,
        dataset_id=dataset_id,
        max_active_jobs=settings.max_active_jobs_per_tenant,
        cost=estimate.as_dict(),
    )
    effects(session).enqueue_job(job.id)
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
    created_after: IsoDateTime | None = None,
    created_before: IsoDateTime | None = None,
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
) -> JobPage:
    """The tenant's jobs, newest first, cursor-paginated."""
    tag_pair = None
    if tag is not None:
        key, sep, value = tag.partition(":")
        if not sep or not key:
            raise ValidationAppError("tag must look like key:value, e.g. team:vision")
        tag_pair = (key, value)
    filters = job_reads.JobFilter(
        status=status_,
        tag=tag_pair,
        created_after=created_after,
        created_before=created_before,
        sweep_id=sweep_id,
    )
    rows, next_cursor = job_reads.list_jobs(
        session, tenant_id=tenant.id, limit=limit, cursor=cursor, filters=filters
    )
    return JobPage(items=[JobOut.from_job(j) for j in rows], next_cursor=next_cursor)


WaitQuery = Annotated[
    float | None,
    Query(
        ge=0,
        le=60,
        description="Long poll: answer as soon as the job changes (from the state the "
        "`If-None-Match` ETag names, else from its state now), at most this many seconds",
    ),
]
IfNoneMatch = Annotated[
    str | None, Header(alias="If-None-Match", description="An ETag from an earlier answer")
]
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the If-None-Match ETag is still current"}
}


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={**PROBLEMS, **NOT_FOUND, **NOT_MODIFIED},
)
async def get_job(
    job_id: str,
    request: Request,
    _credentials: BearerCredentials,
    wait: WaitQuery = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Status, progress, attempt, timestamps and failure reason of one job.

    Every answer has an `ETag`; with `If-None-Match` the answer is 304 while nothing changed.
    With `?wait=SECONDS` (at most 60) it is a long poll that answers as soon as the job
    changes, or at the end with its state (304 when it matches `If-None-Match`). While
    nothing changed, a 304 costs no database query (the process's ETag cache, kept fresh by
    Postgres LISTEN/NOTIFY).
    """
    return await get_job_response(job_id, request, wait=wait, if_none_match=if_none_match)


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
    job = job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
    found = None
    if name in storage.PUBLIC_JOB_ARTIFACTS:
        found = storage.get_artifact(session, key=storage.job_artifact_key(job_id, name))
    if found is None and job.status == JobStatus.SUCCEEDED and job.result is not None:
        png = figures.render_figure(name, job.result, key=job_id)  # drawn on first request
        if png is not None:
            return Response(content=png, media_type="image/png",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
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
    if job.status == JobStatus.CANCELED:
        effects(session).announce_terminal(job.id)
    return JobOut.from_job(job)


# One event of the stream (comments such as `: keep-alive` carry no fields).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "The event id (send as Last-Event-ID)"},
        "event": {"type": "string", "enum": ["status", "progress", "cancel_requested"]},
        "data": {"type": "string", "description": "JSON: job_id, at, and the event's fields"},
    },
    "required": ["id", "event", "data"],
}
SSE_EXAMPLE = (
    'id: 1\nevent: status\ndata: {"job_id": "job_...", "status": "queued", "attempt": 1}\n\n'
    'id: 2\nevent: status\ndata: {"job_id": "job_...", "status": "running", "attempt": 1}\n\n'
    'id: 3\nevent: progress\ndata: {"job_id": "job_...", "epoch": 1, "epochs": 3, '
    '"latest": {"epoch": 1, "val_nll": 0.41}}\n\n'
    'id: 6\nevent: status\ndata: {"job_id": "job_...", "status": "succeeded"}\n\n'
)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        429: {"model": Problem, "description": "Too many open event streams for the tenant"},
        200: {
            "description": "Server-Sent Events: `status` (each transition), `progress` (each "
            "epoch) and `cancel_requested`; the stream ends after the terminal status event. "
            "Each event's `id` can be sent back as `Last-Event-ID` to resume. A `: keep-alive` "
            "comment comes every 15 s while nothing happens.",
            "content": {
                "text/event-stream": {"schema": SSE_EVENT_SCHEMA, "example": SSE_EXAMPLE}
            },
        },
    },
)
async def job_events(
    job_id: str,
    request: Request,
    _credentials: BearerCredentials,
    last_event_id: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description="Resume after this event")
    ] = None,
) -> StreamingResponse:
    """Status changes and per-epoch progress as Server-Sent Events, until the job ends."""
    settings = request_settings(request)
    tenant_id = await in_db_thread(_owned_job_tenant, request, settings, job_id)
    return open_event_stream(
        tenant_id=tenant_id,
        job_id=job_id,
        after_id=last_event_id or 0,
        cap=settings.max_event_streams_per_tenant,
        heartbeat_s=settings.event_stream_heartbeat_seconds,
    )


def _owned_job_tenant(request: Request, settings: Settings, job_id: str) -> str:
    """Authenticate and check the job is the tenant's, in one short session (404 otherwise)."""
    with session_scope() as session:
        tenant = resolve_tenant(request, session, settings)
        job_service.get_job(session, tenant_id=tenant.id, job_id=job_id)
        return tenant.id


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
