"""One Server-Sent Events stream per dashboard page: the live state of its jobs (and sweep)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from api.deps import SessionDep, SettingsDep
from api.ui import session as ui_session
from api.ui import views
from core.config import Settings
from core.db import session_scope
from core.errors import NotFoundError, UnauthorizedError
from core.services import dashboard, jobs, sweeps

POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
MAX_JOBS = 100
router = APIRouter(prefix="/ui", include_in_schema=False)


def _snapshot(
    tenant_id: str, job_ids: list[str], sweep_id: str | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The current state of the page's jobs (a sweep's trials too) and of its sweep."""
    with session_scope() as session:
        states: dict[str, dict[str, Any]] = {}
        sweep_state = None
        if sweep_id:
            sweep = sweeps.get_sweep(session, tenant_id=tenant_id, sweep_id=sweep_id)
            progress = sweeps.sweep_progress(session, sweep_id=sweep.id)
            sweep_state = views.sweep_row(sweep, progress, sweeps.live_status(sweep, progress))
            trials = dashboard.sweep_trials(session, tenant_id=tenant_id, sweep_id=sweep_id)
            states.update({j.id: views.job_state(j) for j in trials})
        for job_id in job_ids:
            if job_id not in states:
                try:
                    job = jobs.get_job(session, tenant_id=tenant_id, job_id=job_id)
                except NotFoundError:
                    continue
                states[job_id] = views.job_state(job)
        return list(states.values()), sweep_state


def _finished(states: list[dict[str, Any]], sweep_state: dict[str, Any] | None) -> bool:
    if sweep_state is not None:
        return bool(sweep_state["terminal"] and sweep_state["has_report"])
    return all(s["terminal"] for s in states)


def _frame(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(tenant_id: str, job_ids: list[str], sweep_id: str | None) -> AsyncIterator[str]:
    sent: dict[str, str] = {}
    last_sweep = ""
    last_sent = time.monotonic()
    while True:
        states, sweep_state = await to_thread.run_sync(_snapshot, tenant_id, job_ids, sweep_id)
        changed = [s for s in states if sent.get(s["id"]) != json.dumps(s, sort_keys=True)]
        if changed:
            sent.update({s["id"]: json.dumps(s, sort_keys=True) for s in changed})
            yield _frame("jobs", changed)
            last_sent = time.monotonic()
        if sweep_state is not None and json.dumps(sweep_state, sort_keys=True) != last_sweep:
            last_sweep = json.dumps(sweep_state, sort_keys=True)
            yield _frame("sweep", sweep_state)
            last_sent = time.monotonic()
        if _finished(states, sweep_state):
            yield _frame("end", {})
            return
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(POLL_SECONDS)


def _tenant_id(request: Request, session: SessionDep, settings: Settings) -> str:
    found = ui_session.page_session(request, session, settings)
    if found is None:
        raise UnauthorizedError("Log in at /ui/login first")
    return found[0].id


@router.get("/events")
def page_events(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    ids: Annotated[str, Query(max_length=MAX_JOBS * 70)] = "",
    sweep_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """SSE: `jobs` (the states that changed), `sweep` (its progress), `end` when all is done."""
    tenant_id = _tenant_id(request, session, settings)
    job_ids = [i for i in ids.split(",") if i][:MAX_JOBS]
    if sweep_id:
        sweeps.get_sweep(session, tenant_id=tenant_id, sweep_id=sweep_id)  # 404 if not ours
    return StreamingResponse(
        _stream(tenant_id, job_ids, sweep_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
