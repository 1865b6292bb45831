"""Run one job: claim, train through core.ml with a lease, store the result in one transaction."""

from __future__ import annotations

import io
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import __version__
from core.config import Settings
from core.db import session_scope
from core.ids import utcnow
from core.services import jobs as job_service
from core.storage import get_artifact, job_artifact_key, put_artifact
from core.timeutil import as_utc
from worker.lease import LeaseKeeper

logger = logging.getLogger("softlabel.worker")
CHECKPOINT_NAME = "checkpoint.pt"


def worker_identity() -> str:
    """A unique lease owner name for this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class ClaimedJob:
    """What the runner needs from the job row, read once after the claim."""

    id: str
    tenant_id: str
    spec: dict[str, Any]
    attempt: int
    dataset_id: str | None
    queued_s: float


def claim(job_id: str, *, owner: str, settings: Settings) -> ClaimedJob | None:
    """Claim the job (queued → running); None when another delivery got it or it ended."""
    with session_scope() as session:
        if not job_service.claim_job(
            session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds
        ):
            return None
        job = job_service.get_job_by_id(session, job_id=job_id)
        assert job is not None
        queued_at = as_utc(job.queued_at)
        started = as_utc(job.started_at) or utcnow()
        queued_s = (started - queued_at).total_seconds() if queued_at else 0.0
        return ClaimedJob(
            job.id, job.tenant_id, job.spec, job.attempt, job.dataset_id, max(queued_s, 0.0)
        )


def _load_upload(dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    with session_scope() as session:
        found = get_artifact(session, key=f"datasets/{dataset_id}.npz")
    if found is None:
        raise FileNotFoundError(f"dataset {dataset_id} has no stored data")
    with np.load(io.BytesIO(found[1]), allow_pickle=False) as npz:
        return npz["X"], npz["y"]


def _write_checkpoint(job: ClaimedJob, blob: bytes) -> None:
    with session_scope() as session:
        put_artifact(
            session,
            key=job_artifact_key(job.id, CHECKPOINT_NAME),
            data=blob,
            tenant_id=job.tenant_id,
            job_id=job.id,
        )


def _read_checkpoint(job: ClaimedJob) -> bytes | None:
    with session_scope() as session:
        found = get_artifact(session, key=job_artifact_key(job.id, CHECKPOINT_NAME))
    return found[1] if found else None


def _record_progress(job: ClaimedJob, owner: str, epochs: int, row: dict[str, Any]) -> None:
    progress = {"epoch": row.get("epoch"), "epochs": epochs, "latest": row}
    with session_scope() as session:
        job_service.record_progress(session, job_id=job.id, owner=owner, progress=progress)


def _end(job_id: str, owner: str, status: str, reason: str = "", message: str = "") -> None:
    with session_scope() as session:
        if status == "canceled":
            job_service.finish_canceled(session, job_id=job_id, owner=owner)
        elif status == "queued":
            job_service.release_job(session, job_id=job_id, owner=owner)
        else:
            job_service.fail_job(
                session, job_id=job_id, owner=owner, reason=reason, message=message
            )


def _store_result(
    job: ClaimedJob, owner: str, result: dict[str, Any], artifacts: dict[str, bytes]
) -> bool:
    links = {}
    with session_scope() as session:
        for name, data in artifacts.items():
            put_artifact(
                session,
                key=job_artifact_key(job.id, name),
                data=data,
                tenant_id=job.tenant_id,
                job_id=job.id,
            )
            links[name] = f"/v1/jobs/{job.id}/artifacts/{name}"
        document = {
            "job_id": job.id,
            "spec": job.spec,
            **result,
            "artifacts": links,
            "timing": {"queued_s": round(job.queued_s, 4), **result.get("timing", {})},
            "environment": {**result.get("environment", {}), "version": __version__},
            "attempt": job.attempt,
        }
        stored = job_service.complete_job(session, job_id=job.id, owner=owner, result=document)
        if not stored:
            session.rollback()  # the lease was lost: another attempt owns the job now
        return stored


def execute_job(job_id: str, *, settings: Settings, owner: str | None = None) -> str:
    """Run a job end to end; returns the outcome ('succeeded', 'failed', 'not_claimed', ...)."""
    from core.ml.experiment import run_experiment
    from core.ml.train import (
        DeviceUnavailableError,
        TrainHooks,
        TrainingDivergedError,
        TrainingStopped,
    )
    from core.ml.upload import InvalidDatasetError, SpecError

    owner = owner or worker_identity()
    job = claim(job_id, owner=owner, settings=settings)
    if job is None:
        logger.info("delivery could not claim the job; nothing to do", extra={"job_id": job_id})
        return "not_claimed"
    epochs = int(job.spec["training"]["epochs"])
    with LeaseKeeper(job_id=job.id, owner=owner, settings=settings) as lease:
        hooks = TrainHooks(
            on_epoch=lambda row: _record_progress(job, owner, epochs, row),
            should_stop=lambda: lease.stop_reason,
            load_checkpoint=lambda: _read_checkpoint(job),
            save_checkpoint=lambda blob: _write_checkpoint(job, blob),
        )
        try:
            arrays = _load_upload(job.dataset_id) if job.dataset_id else None
            output = run_experiment(job.spec, arrays=arrays, hooks=hooks)
        except TrainingStopped as stop:
            if stop.reason == "canceled":
                _end(job.id, owner, "canceled")
                return "canceled"
            if stop.reason == "shutdown":
                _end(job.id, owner, "queued")
                return "released"
            return "lease_lost"
        except TrainingDivergedError as exc:
            _end(job.id, owner, "failed", "diverged", str(exc))
            return "failed"
        except (InvalidDatasetError, SpecError) as exc:
            _end(job.id, owner, "failed", "invalid_dataset", str(exc))
            return "failed"
        except DeviceUnavailableError as exc:
            _end(job.id, owner, "failed", "device_unavailable", str(exc))
            return "failed"
        except Exception as exc:
            if type(exc).__name__ == "SoftTimeLimitExceeded":
                _end(
                    job.id,
                    owner,
                    "failed",
                    "timeout",
                    f"The job exceeded the time limit of {settings.task_soft_time_limit} s; "
                    "use fewer epochs or a smaller model",
                )
                return "failed"
            logger.exception("job failed", extra={"job_id": job.id})
            _end(job.id, owner, "failed", "internal", f"{type(exc).__name__}: {exc}")
            return "failed"
    stored = _store_result(job, owner, output.result, output.artifacts)
    return "succeeded" if stored else "lease_lost"
