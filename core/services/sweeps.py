"""Sweeps: a grid of trial jobs, their stacked groups, progress, and the final comparison."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import ConflictError, NotFoundError, ValidationAppError
from core.ids import new_id
from core.models import Job, Sweep
from core.services import jobs as job_service
from core.services import sweep_figures
from core.services.cost import check_job_cost, enforce_caps
from core.services.pagination import newest_first_page
from core.services.sweep_grid import SHORT_AXIS_NAMES, expand_trials, trial_tags
from core.services.sweep_report import Trial, build_report
from core.spec import JobSpec
from core.states import TERMINAL_STATUSES, SweepStatus
from core.storage import get_artifact
from core.sweep_spec import SweepSpec, group_key, may_stack, stack_key
from core.timeutil import as_utc, utcnow

logger = logging.getLogger("softlabel.sweeps")


@dataclass(frozen=True)
class CreatedSweep:
    """A stored sweep and its trial jobs grouped for stacked training (job ids per group)."""

    sweep: Sweep
    groups: list[list[str]]


def sweep_artifact_key(sweep_id: str, name: str) -> str:
    """The storage key of a sweep's artifact (plots, under sweeps/{id}/)."""
    return f"sweeps/{sweep_id}/{name}"


def create_sweep(
    session: Session,
    *,
    tenant_id: str,
    request: SweepSpec,
    max_trials: int,
    max_attempts: int,
    max_active_jobs: int | None = None,
    settings: Settings | None = None,
) -> CreatedSweep:
    """Store the sweep and one queued job per trial (the caller commits, then enqueues groups).

    With `settings`, every trial's cost estimate is checked against the caps, and so is each
    group of trials that trains stacked (its trials at once).
    """
    n = request.n_trials()
    if n > max_trials:
        sizes = " × ".join(f"{len(v)} {SHORT_AXIS_NAMES[k]}" for k, v in request.grid().items())
        raise ValidationAppError(
            f"The sweep has {n} trials ({sizes}), above the limit of {max_trials}; "
            "use fewer alphas, seeds or axis values",
            extra={"n_trials": n, "max_trials": max_trials},
        )
    if max_active_jobs is not None:
        job_service.ensure_capacity(session, tenant_id=tenant_id, adding=n, limit=max_active_jobs)
    specs, points, dataset_id = expand_trials(session, tenant_id=tenant_id, request=request)
    costs = _trial_costs(session, tenant_id=tenant_id, specs=specs, settings=settings)
    now = utcnow()
    sweep = Sweep(
        id=new_id("swp"),
        tenant_id=tenant_id,
        status="queued",
        request=_sweep_document(request),
        tags=dict(request.base.tags),
        n_trials=len(specs),
        created_at=now,
    )
    session.add(sweep)
    session.flush()
    groups: dict[str, list[str]] = {}
    for spec, point in zip(specs, points, strict=True):
        spec["tags"] = trial_tags(request.base.tags, sweep.id, point)
        job = job_service.create_job(
            session,
            tenant_id=tenant_id,
            spec=spec,
            max_attempts=max_attempts,
            sweep_id=sweep.id,
            dataset_id=dataset_id,
            cost=costs.get(stack_key(spec)),
        )
        groups.setdefault(group_key(spec, job.id), []).append(job.id)
    return CreatedSweep(sweep=sweep, groups=list(groups.values()))


def _sweep_document(request: SweepSpec) -> dict[str, Any]:
    """The sweep's stored request: the resolved base without α and seed, and the grid."""
    base = request.base.resolved()
    base["loss"].pop("alpha", None)
    base["training"].pop("seed", None)
    return {
        "base": base,
        "alphas": list(request.alphas),
        "seeds": list(request.seeds),
        "objective": request.objective,
        "axes": request.axes.as_grid() if request.axes else {},
        "target_accuracy": request.target_accuracy,
    }


def _trial_costs(session: Session, *, tenant_id: str, specs: list[dict[str, Any]],
                 settings: Settings | None) -> dict[str, dict[str, Any]]:
    """Cost estimate per stack group, each trial and each stacked group checked against caps."""
    if settings is None:
        return {}
    sizes = Counter(stack_key(spec) for spec in specs)
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        key = stack_key(spec)
        if key in out:
            continue
        parsed = JobSpec.model_validate(spec)
        cost = check_job_cost(session, tenant_id=tenant_id, spec=parsed, settings=settings)
        if may_stack(spec):  # one stacked model of all the group's trials
            enforce_caps(cost, settings=settings, trials=sizes[key])
        out[key] = cost.as_dict()
    return out


def get_sweep(session: Session, *, tenant_id: str, sweep_id: str) -> Sweep:
    """The tenant's sweep, or NotFoundError (also for another tenant's sweep)."""
    sweep = session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant_id == tenant_id))
    if sweep is None:
        raise NotFoundError(f"Sweep {sweep_id} does not exist")
    return sweep


def find_sweep(session: Session, *, sweep_id: str) -> Sweep | None:
    """The sweep by id alone (a long poll's fan-out, after the caller's access was checked)."""
    return session.get(Sweep, sweep_id)


def list_sweeps(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
) -> tuple[list[Sweep], str | None]:
    """A page of the tenant's sweeps, newest first, and the cursor of the next page."""
    query = select(Sweep).where(Sweep.tenant_id == tenant_id)
    if status:
        query = query.where(Sweep.status == status)
    return newest_first_page(session, query, Sweep, limit=limit, cursor=cursor)


def sweep_progress(session: Session, *, sweep_id: str) -> dict[str, Any]:
    """Trials done (terminal) and total, and the count per status."""
    by_status = {
        str(status): int(count)
        for status, count in session.execute(
            select(Job.status, func.count()).where(Job.sweep_id == sweep_id).group_by(Job.status)
        )
    }
    done = sum(c for s, c in by_status.items() if s in TERMINAL_STATUSES)
    return {"done": done, "total": sum(by_status.values()), "by_status": by_status}


def live_status(sweep: Sweep, progress: dict[str, Any]) -> str:
    """The stored status once final; before that queued (nothing started) or running."""
    if sweep.status in (*TERMINAL_STATUSES, "canceling"):
        return sweep.status
    started = progress["total"] - progress["by_status"].get("queued", 0)
    return "running" if started else "queued"


def mark_running(session: Session, *, sweep_ids: set[str]) -> None:
    """queued → running for sweeps whose first trials a worker has claimed."""
    if sweep_ids:
        session.execute(
            update(Sweep)
            .where(Sweep.id.in_(sweep_ids), Sweep.status == SweepStatus.QUEUED)
            .values(status=SweepStatus.RUNNING)
            .execution_options(synchronize_session=False)
        )


def sweep_ids_of(session: Session, *, job_ids: list[str]) -> list[str]:
    """The distinct sweeps that the given jobs are trials of."""
    if not job_ids:
        return []
    rows = session.scalars(select(Job.sweep_id).where(Job.id.in_(job_ids)).distinct())
    return sorted(sweep_id for sweep_id in rows if sweep_id)


def cancel_sweep(session: Session, *, tenant_id: str, sweep_id: str) -> Sweep:
    """Cancel every unfinished trial (queued at once, running by flag); 409 when already final."""
    sweep = get_sweep(session, tenant_id=tenant_id, sweep_id=sweep_id)
    if sweep.status in TERMINAL_STATUSES:
        raise ConflictError(f"Sweep {sweep_id} is already {sweep.status} and cannot be canceled")
    open_ids = list(
        session.scalars(
            select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(("queued", "running")))
        )
    )
    for job_id in open_ids:
        with contextlib.suppress(ConflictError):  # it finished meanwhile
            job_service.cancel_job(session, tenant_id=tenant_id, job_id=job_id)
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status.in_(("queued", "running")))
        .values(status="canceling")
    )
    session.flush()
    session.refresh(sweep)
    return sweep


def all_trials_done(session: Session, *, sweep_id: str) -> bool:
    """True when no trial of the sweep is queued or running."""
    open_count = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.sweep_id == sweep_id, Job.status.notin_(TERMINAL_STATUSES))
    )
    return not open_count


def _trials(session: Session, sweep_id: str) -> list[Trial]:
    rows = session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id))
    trials = []
    for job in rows:
        spec = job.spec
        context = {}
        for axis in (a for a in SHORT_AXIS_NAMES if a not in ("loss.alpha", "training.seed")):
            node: Any = spec
            for part in axis.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            context[axis] = node
        trials.append(
            Trial(
                job_id=job.id,
                status=job.status,
                alpha=float(spec["loss"]["alpha"]),
                seed=int(spec["training"]["seed"]),
                context=context,
                result=job.result if job.status == "succeeded" else None,
            )
        )
    return trials


def compute_report(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The comparison of a sweep's trials (contexts reduced to the axes the request varies)."""
    request = sweep.request or {}
    axes = [a for a in (request.get("axes") or {}) if a in SHORT_AXIS_NAMES]
    trials = [
        Trial(t.job_id, t.status, t.alpha, t.seed, {a: t.context[a] for a in axes}, t.result)
        for t in _trials(session, sweep.id)
    ]
    report = build_report(
        trials,
        objective=str(request.get("objective", "val_nll")),
        target_accuracy=float(request.get("target_accuracy", 0.9)),
    )
    return {
        "sweep_id": sweep.id,
        "axes": {
            "alpha": request.get("alphas"),
            "seed": request.get("seeds"),
            **(request.get("axes") or {}),
        },
        **report,
    }


def _final_status(sweep: Sweep, report: dict[str, Any]) -> str:
    if sweep.status == "canceling":
        return "canceled"
    if report["trials"].get("succeeded"):
        return "succeeded"
    canceled = report["trials"].get("canceled", 0)
    return "canceled" if canceled and canceled == report["trials"]["total"] else "failed"


def finalize_sweep_if_done(session: Session, *, sweep_id: str) -> bool:
    """Once every trial is terminal: store the report and the final status, once.

    The sweep row's conditional update (status not yet final) is the guard: of two workers
    finishing the last trials together, one writes; the other's update matches no row. The
    report's plots are listed, and drawn from it on first request (core.services.
    sweep_figures). The caller commits.
    """
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or sweep.status in TERMINAL_STATUSES:
        return False
    if not all_trials_done(session, sweep_id=sweep_id):
        return False
    report = compute_report(session, sweep)
    names = sweep_figures.figure_names(report)
    report["plots"] = {name: f"/v1/sweeps/{sweep_id}/artifacts/{name}" for name in names}
    status = _final_status(sweep, report)
    report["status"] = status
    now = utcnow()
    result = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status.notin_(TERMINAL_STATUSES))
        .values(status=status, report=report, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False  # another worker wrote it; nothing of ours was added
    session.expire(sweep)  # reloaded only if this session reads it again
    logger.info("sweep finalized", extra={"sweep_id": sweep_id, "status": status})
    return True


def needs_finalizing(session: Session, *, sweep: Sweep, idle_seconds: float) -> bool:
    """True when every trial ended more than `idle_seconds` ago but no report was written."""
    if sweep.status in TERMINAL_STATUSES or not all_trials_done(session, sweep_id=sweep.id):
        return False
    last = session.scalar(select(func.max(Job.finished_at)).where(Job.sweep_id == sweep.id))
    if last is None:
        return True
    last_utc = as_utc(last)
    return last_utc is None or (utcnow() - last_utc).total_seconds() > idle_seconds


def get_sweep_artifact(
    session: Session, *, tenant_id: str, sweep_id: str, name: str
) -> tuple[str, bytes]:
    """(content type, bytes) of a sweep plot listed in its report, or NotFoundError."""
    sweep = get_sweep(session, tenant_id=tenant_id, sweep_id=sweep_id)
    data = sweep_plot(session, sweep=sweep, name=name)
    if data is None:
        plots = (sweep.report or {}).get("plots") or {}
        available = ", ".join(plots) or "none yet (plots exist once the sweep has finished)"
        raise NotFoundError(f"Sweep {sweep_id} has no artifact {name!r}; available: {available}")
    return "image/png", data


def sweep_plot(session: Session, *, sweep: Sweep, name: str) -> bytes | None:
    """A plot listed in the sweep's report: stored (older sweeps) or drawn from the report."""
    report = sweep.report or {}
    if name not in (report.get("plots") or {}):
        return None
    found = get_artifact(session, key=sweep_artifact_key(sweep.id, name))
    if found is not None:
        return found[1]
    return sweep_figures.render_sweep_figure(name, report, key=sweep.id)
