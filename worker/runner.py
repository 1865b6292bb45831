"""Run one job: claim, train through core.ml with a lease, store the result in one transaction."""

from __future__ import annotations

import io
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from core import __version__
from core.config import Settings
from core.db import session_scope
from core.ids import utcnow
from core.models import Job
from core.queue import enqueue_job
from core.services import jobs as job_service
from core.storage import get_artifact, job_artifact_key, put_artifact
from core.timeutil import as_utc
from worker.lease import SHUTDOWN, TIMEOUT, LeaseKeeper

logger = logging.getLogger("softlabel.worker")
CHECKPOINT_NAME = "checkpoint.pt"
T = TypeVar("T")


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


def is_transient(exc: BaseException) -> bool:
    """True for database errors that a retry on a fresh connection may cure."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def with_db_retry(fn: Callable[[], T], *, what: str, deadline_s: float = 60.0) -> T:
    """Call `fn` (one whole transaction), retrying transient DB errors with backoff."""
    give_up = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)


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
    def read() -> bytes | None:
        with session_scope() as session:
            found = get_artifact(session, key=f"datasets/{dataset_id}.npz")
        return found[1] if found else None

    blob = with_db_retry(read, what="load dataset")
    if blob is None:
        raise FileNotFoundError(f"dataset {dataset_id} has no stored data")
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        return npz["X"], npz["y"]


def _write_checkpoint(job: ClaimedJob, owner: str, blob: bytes) -> None:
    """Store the checkpoint if this worker still owns the job; else stop (lease lost)."""
    from core.ml.train import TrainingStopped

    def write() -> None:
        with session_scope() as session:
            row = session.execute(
                select(Job.status, Job.lease_owner).where(Job.id == job.id).with_for_update()
            ).one_or_none()
            if row is None or row.status != "running" or row.lease_owner != owner:
                raise TrainingStopped("lease_lost")  # another attempt owns the job now
            put_artifact(
                session,
                key=job_artifact_key(job.id, CHECKPOINT_NAME),
                data=blob,
                tenant_id=job.tenant_id,
                job_id=job.id,
            )

    with_db_retry(write, what="save checkpoint")


def _read_checkpoint(job: ClaimedJob) -> bytes | None:
    def read() -> bytes | None:
        with session_scope() as session:
            found = get_artifact(session, key=job_artifact_key(job.id, CHECKPOINT_NAME))
        return found[1] if found else None

    return with_db_retry(read, what="load checkpoint")


def _record_progress(job: ClaimedJob, owner: str, epochs: int, row: dict[str, Any]) -> None:
    progress = {"epoch": row.get("epoch"), "epochs": epochs, "latest": row}

    def write() -> None:
        with session_scope() as session:
            job_service.record_progress(session, job_id=job.id, owner=owner, progress=progress)

    try:
        with_db_retry(write, what="record progress", deadline_s=5.0)
    except Exception as exc:
        if not is_transient(exc):
            raise
        logger.warning("progress not recorded: %s", exc, extra={"job_id": job.id})


def _owned_by(job_id: str, owner: str) -> bool:
    """Whether the job is still running under our lease (after a commit of unknown outcome)."""
    with session_scope() as session:
        row = session.get(Job, job_id)
        return row is not None and row.status == "running" and row.lease_owner == owner


def _transition(job_id: str, owner: str, what: str, apply: Callable[[Any], bool]) -> bool:
    """Run an owner-checked transition; a commit whose outcome is unknown is checked first."""
    give_up = time.monotonic() + 60.0
    delay = 0.2
    while True:
        try:
            with session_scope() as session:
                return apply(session)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > give_up:
                raise
            logger.warning("%s: commit failed (%s); checking before retrying", what, exc)
        time.sleep(delay)
        delay = min(delay * 2, 3.0)
        try:
            if not with_db_retry(lambda: _owned_by(job_id, owner), what=f"{what} check"):
                return False  # it committed after all, or the lease went to another attempt
        except Exception as exc:  # noqa: BLE001 - give the transition itself another try
            logger.warning("%s: check failed (%s)", what, exc)


def _end(job_id: str, owner: str, status: str, reason: str = "", message: str = "") -> bool:
    def apply(session: Any) -> bool:
        if status == "canceled":
            return job_service.finish_canceled(session, job_id=job_id, owner=owner)
        if status == "queued":
            return job_service.release_job(session, job_id=job_id, owner=owner)
        return job_service.fail_job(
            session, job_id=job_id, owner=owner, reason=reason, message=message
        )

    return _transition(job_id, owner, f"end {status}", apply)


def _release(job_id: str, owner: str) -> None:
    """Give the job back to the queue (soft shutdown) and re-enqueue it after the commit."""
    if not _end(job_id, owner, "queued"):
        return
    try:
        enqueue_job(job_id)

        def mark() -> None:
            with session_scope() as session:
                job_service.mark_enqueued(session, job_ids=[job_id])

        with_db_retry(mark, what="mark enqueued", deadline_s=5.0)
    except Exception as exc:  # noqa: BLE001 - the reconciler re-enqueues it after the grace
        logger.warning("re-enqueue after release failed: %s", exc, extra={"job_id": job_id})


def store_result(
    job: ClaimedJob, owner: str, result: dict[str, Any], artifacts: dict[str, bytes]
) -> bool:
    """Artifacts, result, status and finished_at in one transaction (owner-checked)."""

    def apply(session: Any) -> bool:
        links = {}
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

    if _transition(job.id, owner, "store result", apply):
        return True

    def ours() -> bool:
        with session_scope() as session:
            row = session.get(Job, job.id)
            return (
                row is not None
                and row.status == "succeeded"
                and (row.result or {}).get("attempt") == job.attempt
            )

    return with_db_retry(ours, what="verify result")


def _timeout_message(settings: Settings) -> str:
    return (
        f"The job exceeded the time limit of {settings.task_soft_time_limit} s; "
        "use fewer epochs or a smaller model"
    )


def _hard_timeout_message() -> str:
    from core.config import get_settings

    return (
        f"The job exceeded the hard time limit of {get_settings().task_time_limit} s and was "
        "stopped; use fewer epochs or a smaller model"
    )


def execute_job(job_id: str, *, settings: Settings, owner: str | None = None) -> str:
    """Run a job end to end; returns the outcome ('succeeded', 'failed', 'not_claimed', ...)."""
    from celery.exceptions import SoftTimeLimitExceeded

    import core.ml.experiment  # noqa: F401 - load torch before the lease clock starts

    owner = owner or worker_identity()
    job = claim(job_id, owner=owner, settings=settings)
    if job is None:
        logger.info("delivery could not claim the job; nothing to do", extra={"job_id": job_id})
        return "not_claimed"
    try:
        return _train_and_store(job, owner, settings)
    except SoftTimeLimitExceeded:
        # The checkpoint of the last finished epoch is stored; the attempt ends here.
        _end(job.id, owner, "failed", "timeout", _timeout_message(settings))
        return "failed"
    finally:
        if (job.spec.get("tags") or {}).get("sweep_id"):  # a sweep trial run alone ends its sweep
            from worker.group_runner import finalize_sweep_of

            finalize_sweep_of(job.id)


def _train_and_store(job: ClaimedJob, owner: str, settings: Settings) -> str:
    """Train a claimed job under its lease and store the outcome."""
    from celery.exceptions import SoftTimeLimitExceeded

    from core.ml.experiment import run_experiment
    from core.ml.train import (
        DeviceUnavailableError,
        TrainHooks,
        TrainingDivergedError,
        TrainingStopped,
    )
    from core.ml.upload import InvalidDatasetError, SpecError

    epochs = int(job.spec["training"]["epochs"])
    with LeaseKeeper(job_id=job.id, owner=owner, settings=settings) as lease:
        hooks = TrainHooks(
            on_epoch=lambda row: _record_progress(job, owner, epochs, row),
            should_stop=lambda: lease.stop_reason,
            load_checkpoint=lambda: _read_checkpoint(job),
            save_checkpoint=lambda blob: _write_checkpoint(job, owner, blob),
        )
        try:
            arrays = _load_upload(job.dataset_id) if job.dataset_id else None
            output = run_experiment(job.spec, arrays=arrays, hooks=hooks)
        except TrainingStopped as stop:
            return _stopped(job.id, owner, stop.reason)
        except TrainingDivergedError as exc:
            _end(job.id, owner, "failed", "diverged", str(exc))
            return "failed"
        except (InvalidDatasetError, SpecError) as exc:
            _end(job.id, owner, "failed", "invalid_dataset", str(exc))
            return "failed"
        except DeviceUnavailableError as exc:
            _end(job.id, owner, "failed", "device_unavailable", str(exc))
            return "failed"
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            logger.exception("job failed", extra={"job_id": job.id})
            _end(job.id, owner, "failed", "internal", f"{type(exc).__name__}: {exc}")
            return "failed"
        lease.renew_once()  # a cancel or a lost lease that came during the last epoch
        if lease.stop_reason:
            return _stopped(job.id, owner, lease.stop_reason)
    stored = store_result(job, owner, output.result, output.artifacts)
    return "succeeded" if stored else "lease_lost"


def _stopped(job_id: str, owner: str, reason: str) -> str:
    """End an attempt that was stopped from outside: cancel, shutdown or a lost lease."""
    if reason == "canceled":
        _end(job_id, owner, "canceled")
        return "canceled"
    if reason == SHUTDOWN:
        _release(job_id, owner)
        return "released"
    if reason == TIMEOUT:  # the hard time limit: SIGTERM now, SIGKILL in a moment
        _end(job_id, owner, "failed", "timeout", _hard_timeout_message())
        return "failed"
    return "lease_lost"  # another attempt owns the job: write nothing
