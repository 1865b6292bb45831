"""Sweeps: submit a grid over α (× seeds × axes), follow it, read the comparison and plots."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status

from api.deps import CursorQuery, LimitQuery, SessionDep, SettingsDep, TenantDep
from api.schemas import Problem, SweepOut, SweepPage
from core.errors import ConflictError
from core.models import Sweep
from core.queue import enqueue_finalize_sweep, enqueue_group, enqueue_job
from core.services import jobs as job_service
from core.services import sweeps as sweep_service
from core.services import webhooks
from core.spec import SweepSpec

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
logger = logging.getLogger("softlabel.api")

PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or invalid API key"},
    422: {"model": Problem, "description": "Invalid request"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such sweep"}
}
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


def _enqueue_groups(session: SessionDep, groups: list[list[str]]) -> None:
    """Hand each committed group to the broker; if it is down, the reconciler sends the trials."""
    sent: list[str] = []
    for group in groups:
        try:
            if len(group) == 1:
                enqueue_job(group[0])
            else:
                enqueue_group(group)
            sent.extend(group)
        except Exception as exc:  # noqa: BLE001 - stored; the reconciler sends them one by one
            logger.warning("enqueue of a trial group failed, reconciler will retry: %s", exc)
    job_service.mark_enqueued(session, job_ids=sent)
    session.commit()


def _out(session: SessionDep, sweep: Sweep, groups: int | None = None) -> SweepOut:
    progress = sweep_service.sweep_progress(session, sweep_id=sweep.id)
    state = sweep_service.live_status(sweep, progress)
    return SweepOut.from_sweep(sweep, progress=progress, status=state, groups=groups)


def _finalize_if_stuck(session: SessionDep, sweep: Sweep) -> None:
    """Ask a worker for the report when every trial ended a while ago and none was written."""
    if sweep_service.needs_finalizing(session, sweep=sweep, idle_seconds=FINALIZE_GRACE_SECONDS):
        try:
            enqueue_finalize_sweep(sweep.id)
        except Exception as exc:  # noqa: BLE001 - asked again at the next read
            logger.warning("could not request the sweep report: %s", exc)


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
    session.commit()
    _enqueue_groups(session, created.groups)
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


@router.get("/{sweep_id}", response_model=SweepOut, responses={**PROBLEMS, **NOT_FOUND})
def get_sweep(sweep_id: str, session: SessionDep, tenant: TenantDep) -> SweepOut:
    """Status and progress (trials done / total); the trials are jobs under /v1/jobs?sweep_id=."""
    sweep = sweep_service.get_sweep(session, tenant_id=tenant.id, sweep_id=sweep_id)
    _finalize_if_stuck(session, sweep)
    return _out(session, sweep)


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
    session.commit()
    if sweep_service.all_trials_done(session, sweep_id=sweep.id):
        try:
            enqueue_finalize_sweep(sweep.id)  # no worker holds a trial: ask one for the report
        except Exception as exc:  # noqa: BLE001 - the next GET asks again
            logger.warning("could not request the sweep report: %s", exc)
    return _out(session, sweep)
