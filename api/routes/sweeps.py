"""Sweeps: submit a grid over α (× seeds × axes), follow it, read the comparison and plots."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request, Response, status

from api.deps import (
    BearerCredentials,
    CursorQuery,
    LimitQuery,
    SessionDep,
    SettingsDep,
    TenantDep,
    bearer_token,
    in_db_thread,
    request_settings,
    resolve_tenant,
)
from api.longpoll import (
    Fetched,
    cached_answer,
    cached_response,
    change_listener,
    conditional_response,
    etag_of,
    wait_for_change,
)
from api.problems import PROBLEMS, not_found
from api.routes.jobs import NOT_MODIFIED, IfNoneMatch, WaitQuery
from api.schemas import Problem, SweepOut, SweepPage
from core.db import session_scope
from core.errors import ConflictError
from core.models import Sweep
from core.services import sweeps as sweep_service
from core.services import webhooks
from core.services.effects import effects
from core.services.tenants import hash_key
from core.services.watch import CHANNEL_SWEEP
from core.states import TERMINAL_STATUSES
from core.sweep_spec import SweepSpec

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
logger = logging.getLogger("softlabel.api")

NOT_FOUND = not_found("sweep")
# A sweep whose trials all ended this long ago without a report gets one (a lost finalize).
FINALIZE_GRACE_SECONDS = 15.0
EXAMPLE_SWEEP: dict[str, Any] = {
    "base": {
        "dataset": {"source": "builtin", "name": "digits"},
        "model": {"arch": "mlp", "hidden": [128]},
        "training": {"epochs": 20},
    },
    "alphas": [0, 0.05, 0.1, 0.2],
    "seeds": [0, 1, 2],
    "objective": "val_nll",
}


def _out(session: SessionDep, sweep: Sweep, groups: int | None = None) -> SweepOut:
    progress = sweep_service.sweep_progress(session, sweep_id=sweep.id)
    state = sweep_service.live_status(sweep, progress)
    return SweepOut.from_sweep(sweep, progress=progress, status=state, groups=groups)


def _finalize_if_stuck(session: SessionDep, sweep: Sweep) -> None:
    """Ask a worker for the report when every trial ended a while ago and none was written."""
    if sweep_service.needs_finalizing(session, sweep=sweep, idle_seconds=FINALIZE_GRACE_SECONDS):
        effects(session).finalize_sweep(sweep.id)  # asked again at the next read if lost


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepOut,
    responses={**PROBLEMS, 429: {"model": Problem, "description": "Too many active jobs"}},
)
def submit_sweep(
    request: Annotated[SweepSpec, Body(openapi_examples={"digits": {"value": EXAMPLE_SWEEP}})],
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    response: Response,
) -> SweepOut:
    """Validate the grid, store the sweep and one queued job per trial, enqueue the groups.

    Trials that differ only in α and the seed form one group, trained together as one
    stacked model by one worker; other axes (model.arch, label_noise,
    optimizer.weight_decay) give separate groups spread over the workers.
    """
    webhooks.validate_spec_url(request.base.webhook_url, settings=settings)
    created = sweep_service.create_sweep(
        session,
        tenant_id=tenant.id,
        request=request,
        max_trials=settings.max_sweep_trials,
        max_attempts=settings.max_attempts,
        max_active_jobs=settings.max_active_jobs_per_tenant,
        settings=settings,
    )
    fx = effects(session)
    for group in created.groups:
        fx.enqueue_group(group)
    response.headers["Location"] = f"/v1/sweeps/{created.sweep.id}"
    return _out(session, created.sweep, groups=len(created.groups))


@router.get("", response_model=SweepPage, responses=PROBLEMS)
def list_sweeps(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
    status_: Annotated[
        str | None,
        Query(alias="status", pattern="^(queued|running|canceling|succeeded|failed|canceled)$"),
    ] = None,
) -> SweepPage:
    """The tenant's sweeps, newest first, cursor-paginated."""
    rows, next_cursor = sweep_service.list_sweeps(
        session, tenant_id=tenant.id, limit=limit, cursor=cursor, status=status_
    )
    return SweepPage(items=[_out(session, s) for s in rows], next_cursor=next_cursor)


def _sweep_body(request: Request, sweep_id: str) -> Fetched:
    """The caller's sweep as the SweepOut JSON body (401 / 404 like every route)."""
    with session_scope() as session:
        tenant = resolve_tenant(request, session, request_settings(request))
        sweep = sweep_service.get_sweep(session, tenant_id=tenant.id, sweep_id=sweep_id)
        _finalize_if_stuck(session, sweep)
        return _fetched(session, sweep)


def _fetched(session: SessionDep, sweep: Sweep) -> Fetched:
    progress = sweep_service.sweep_progress(session, sweep_id=sweep.id)
    state = sweep_service.live_status(sweep, progress)
    body = SweepOut.from_sweep(sweep, progress=progress, status=state).model_dump_json().encode()
    # Every trial ended but no report yet: a read may have to ask for it, so it is not cached.
    waiting_for_report = sweep.report is None and progress["done"] >= progress["total"]
    return Fetched(sweep.tenant_id, body, cacheable=not waiting_for_report)


def _sweep_by_id(sweep_id: str) -> Fetched | None:
    with session_scope() as session:
        sweep = sweep_service.find_sweep(session, sweep_id=sweep_id)
        return None if sweep is None else _fetched(session, sweep)


async def _fetch_sweep(sweep_id: str) -> Fetched | None:
    """The sweep's body by id, once per change for all of this process's waiters."""
    return await in_db_thread(_sweep_by_id, sweep_id)


@router.get(
    "/{sweep_id}",
    response_model=SweepOut,
    responses={**PROBLEMS, **NOT_FOUND, **NOT_MODIFIED},
)
async def get_sweep(
    sweep_id: str,
    request: Request,
    _credentials: BearerCredentials,
    wait: WaitQuery = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Status and progress (trials done / total); the trials are jobs under /v1/jobs?sweep_id=.

    `ETag` / `If-None-Match` (304, without a query while nothing changed) and
    `?wait=SECONDS` long polls as on GET /v1/jobs/{id}: any trial's change or the sweep's
    own wakes it.
    """
    listener = change_listener(CHANNEL_SWEEP, _fetch_sweep)

    async def load() -> bytes:
        ticket = listener.cache.ticket() if listener is not None else None
        found = await in_db_thread(_sweep_body, request, sweep_id)
        request.state.tenant_id = found.tenant_id  # whose fan-out bodies a long poll may take
        token = bearer_token(request)
        if listener is not None and token is not None and found.cacheable:
            listener.cache.store_key(ticket, key_hash=hash_key(token), tenant_id=found.tenant_id)
            listener.cache.store(ticket, CHANNEL_SWEEP, sweep_id, tenant_id=found.tenant_id,
                                 etag=etag_of(found.body), body=found.body)
        return found.body

    if wait is None:
        cached = cached_answer(listener, CHANNEL_SWEEP, sweep_id, request)
        if cached is not None:
            return cached_response(cached, if_none_match)
        if listener is not None:
            listener.start()
        return conditional_response(await load(), if_none_match)
    return await wait_for_change(
        listener=listener,
        channel=CHANNEL_SWEEP,
        key=sweep_id,
        request=request,
        load=load,
        if_none_match=if_none_match,
        wait=wait,
        settled=lambda body: json.loads(body)["status"] in TERMINAL_STATUSES,
    )


@router.get(
    "/{sweep_id}/report",
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "The sweep has not finished yet"},
    },
)
def get_report(sweep_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    """The comparison: per grid point mean/std over seeds, ECE interval, recommended α, Pareto."""
    sweep = sweep_service.get_sweep(session, tenant_id=tenant.id, sweep_id=sweep_id)
    if sweep.report is None:
        _finalize_if_stuck(session, sweep)
        progress = sweep_service.sweep_progress(session, sweep_id=sweep.id)
        raise ConflictError(
            f"Sweep {sweep_id} is {sweep_service.live_status(sweep, progress)} "
            f"({progress['done']} of {progress['total']} trials done); the report exists once "
            "every trial has ended",
            extra={"progress": progress},
        )
    return sweep.report


@router.get(
    "/{sweep_id}/artifacts/{name}",
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        200: {"content": {"image/png": {}}, "description": "The plot's bytes"},
    },
    response_class=Response,
)
def get_artifact(sweep_id: str, name: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Download a comparison plot named in the report's `plots` (metrics_vs_alpha.png, ...)."""
    content_type, data = sweep_service.get_sweep_artifact(
        session, tenant_id=tenant.id, sweep_id=sweep_id, name=name
    )
    return Response(
        content=data,
        media_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post(
    "/{sweep_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepOut,
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "The sweep has already finished"},
    },
)
def cancel_sweep(sweep_id: str, session: SessionDep, tenant: TenantDep) -> SweepOut:
    """Cancel every unfinished trial: queued ones at once, running ones within seconds."""
    sweep = sweep_service.cancel_sweep(session, tenant_id=tenant.id, sweep_id=sweep_id)
    if sweep_service.all_trials_done(session, sweep_id=sweep.id):
        effects(session).finalize_sweep(sweep.id)  # no worker holds a trial: ask one for it
    return _out(session, sweep)
