"""Response models of the HTTP API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field
from pydantic_core import to_json

from core.models import Job, Sweep
from core.timeutil import iso


class FieldError(BaseModel):
    """One invalid field of a 422 validation-error problem."""

    loc: list[str] = Field(default_factory=list, examples=[["body", "loss", "alpha"]])
    field: str | None = Field(default=None, examples=["loss.alpha"])
    msg: str
    type: str | None = None


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


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


class ExportStatus(BaseModel):
    """One export of a finished job or sweep (e.g. to MLflow); it never changes the outcome."""

    status: str = Field(
        examples=["succeeded"],
        description=(
            "pending, retrying, succeeded, failed (after every retry) or skipped (no server)"
        ),
    )
    run_id: str | None = Field(default=None, description="The run in the export target")
    error: str | None = Field(default=None, description="The last error, if any")
    attempts: int = 0


def exports_out(exports: dict[str, Any] | None) -> dict[str, ExportStatus]:
    """The exports column as response models."""
    return {name: ExportStatus(**value) for name, value in (exports or {}).items()}


def exports_json(exports: dict[str, Any] | None) -> dict[str, Any]:
    """The exports column as the same JSON as ExportStatus (for the hot path)."""
    return {
        name: {
            "status": value.get("status"),
            "run_id": value.get("run_id"),
            "error": value.get("error"),
            "attempts": value.get("attempts", 0),
        }
        for name, value in (exports or {}).items()
    }


class JobOut(BaseModel):
    """A job's status, progress, attempt and timestamps."""

    id: str = Field(examples=["job_5f0c0e1e9a2b4c7d8e9f00112233aabb"])
    status: str = Field(examples=["running"])
    cancel_requested: bool = False
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
    exports: dict[str, ExportStatus] = Field(
        default_factory=dict, description="Exports of the finished job, e.g. `mlflow`"
    )
    cost: dict[str, Any] | None = Field(
        default=None, description="Estimate made at submission: parameters, FLOPs, memory")
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
            cancel_requested=bool(job.cancel_requested),
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
            exports=exports_out(job.exports),
            cost=job.cost,
            links=JobLinks(
                self=base, result=f"{base}/result", events=f"{base}/events", cancel=f"{base}/cancel"
            ),
        )


def job_out_json(row: Mapping[Any, Any]) -> bytes:
    """The JSON body of `JobOut.from_job` for a job row (a mapping of the job's columns).

    Byte-identical to FastAPI serialising the `JobOut` response model (pydantic-core writes
    both), without building and validating the model: GET /v1/jobs/{id} is the hot path.
    """
    base = f"/v1/jobs/{row['id']}"
    failure = (
        {"reason": row["failure_reason"], "message": row["failure_message"]}
        if row["failure_reason"]
        else None
    )
    doc = {
        "id": row["id"],
        "status": row["status"],
        "cancel_requested": bool(row["cancel_requested"]),
        "attempt": row["attempt"],
        "max_attempts": row["max_attempts"],
        "sweep_id": row["sweep_id"],
        "tags": row["tags"] or {},
        "progress": row["progress"] or {},
        "failure": failure,
        "created_at": iso(row["created_at"]) or "",
        "queued_at": iso(row["queued_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "spec": row["spec"],
        "exports": exports_json(row.get("exports")),
        "cost": row["cost"],
        "links": {
            "self": base,
            "result": f"{base}/result",
            "events": f"{base}/events",
            "cancel": f"{base}/cancel",
        },
    }
    return to_json(doc)


class JobPage(BaseModel):
    """A page of jobs, newest first."""

    items: list[JobOut]
    next_cursor: str | None


class Health(BaseModel):
    """Liveness or readiness."""

    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


class WebhookDeliveryOut(BaseModel):
    """One logged webhook delivery attempt."""

    id: int
    event: str = Field(examples=["job.succeeded"])
    url: str
    attempt: int
    status_code: int | None = Field(examples=[200])
    error: str | None
    created_at: str


class WebhookDeliveryList(BaseModel):
    """A job's webhook delivery attempts, oldest first."""

    items: list[WebhookDeliveryOut]


class WebhookSecret(BaseModel):
    """The tenant's webhook signing secret (HMAC-SHA256 key)."""

    secret: str
    signature_header: str = "X-Softlabel-Signature"
    timestamp_header: str = "X-Softlabel-Timestamp"
    scheme: str = "sha256=hex(HMAC-SHA256(secret, timestamp + '.' + body))"


class SweepProgress(BaseModel):
    """Trials done (terminal) of the total, and the count per status."""

    done: int
    total: int
    by_status: dict[str, int]


class SweepLinks(BaseModel):
    """Where to go next."""

    self: str
    report: str
    jobs: str
    cancel: str


class SweepOut(BaseModel):
    """A sweep's status, progress and request."""

    id: str = Field(examples=["swp_5f0c0e1e9a2b4c7d8e9f00112233aabb"])
    status: str = Field(examples=["running"])
    objective: str
    n_trials: int
    progress: SweepProgress
    groups: int | None = None
    recommended_alpha: float | None = None
    tags: dict[str, str]
    request: dict[str, Any]
    created_at: str
    finished_at: str | None
    exports: dict[str, ExportStatus] = Field(
        default_factory=dict, description="Exports of the finished sweep, e.g. `mlflow`"
    )
    links: SweepLinks

    @classmethod
    def from_sweep(
        cls, sweep: Sweep, *, progress: dict[str, Any], status: str, groups: int | None = None
    ) -> SweepOut:
        """Build from the ORM row and its live progress."""
        base = f"/v1/sweeps/{sweep.id}"
        recommended = (sweep.report or {}).get("recommended") or {}
        return cls(
            id=sweep.id,
            status=status,
            objective=str((sweep.request or {}).get("objective", "val_nll")),
            n_trials=sweep.n_trials,
            progress=SweepProgress(**progress),
            groups=groups,
            recommended_alpha=recommended.get("alpha"),
            tags=sweep.tags or {},
            request=sweep.request,
            created_at=iso(sweep.created_at) or "",
            finished_at=iso(sweep.finished_at),
            exports=exports_out(sweep.exports),
            links=SweepLinks(
                self=base,
                report=f"{base}/report",
                jobs=f"/v1/jobs?sweep_id={sweep.id}",
                cancel=f"{base}/cancel",
            ),
        )


class SweepPage(BaseModel):
    """A page of sweeps, newest first."""

    items: list[SweepOut]
    next_cursor: str | None
